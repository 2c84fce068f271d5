// error.hpp - failures reported as `PROG: WHAT ADDRESS: REASON`, and exit statuses.
//
// Two layers, as in Stevens' UNP: warn() reports and lets the caller go on (drop one
// client); die() reports and exits 1, where the program cannot go on (bind at start-up).
// REASON is strerror(err), err is errno unless given: one line per call, as TLPI's errExit:
//
//   if (bind(fd, addr, size) == -1) lab::die("bind", where);
//
// Text from elsewhere (an address, a peer's socket name, an argument) is escaped.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>

namespace lab {

// Exit statuses every lab uses: 0 success, 1 failure at run time, 2 bad command line.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Remembers the program's name (basename of argv[0]) for every message that follows.
void set_program_name(std::string_view argv0);
[[nodiscard]] const std::string& program_name();

// `text` safe for a terminal or a log: control bytes as \n \r \t \xNN, a backslash as \\,
// non-UTF-8 bytes as \xNN, invisible controls (C1, bidi overrides) as \uNNNN. Printable
// ASCII and valid UTF-8 (names in Chinese, say) pass unchanged.
[[nodiscard]] std::string escape(std::string_view text);

// "PROG: WHAT WHERE: strerror(err)" on stderr; WHERE may be empty. die() then exits 1.
void warn(std::string_view what, std::string_view where = {}, int err = errno);
[[noreturn]] void die(std::string_view what, std::string_view where = {}, int err = errno);

// "PROG: TEXT" on stderr, for failures that have no errno. fatal() then exits 1.
void note(std::string_view text);
[[noreturn]] void fatal(std::string_view text);

// The student kit's stand-in for a task not yet written: prints "PROG: not implemented:
// task ID ..." and exits 1. todo<T>() does the same where a value of type T is expected.
[[noreturn]] void todo(std::string_view task);
template <typename T>
[[noreturn]] T todo(std::string_view task) {
    todo(task);
}

}  // namespace lab
