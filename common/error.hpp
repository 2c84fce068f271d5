// error.hpp - one way to report failures, as `PROG: WHAT ADDRESS: REASON`.
//
// Two layers, as in Stevens' UNP: report_*() print and let the caller decide what to do
// (drop one client, keep serving); die_*() print and exit, and belong in main-level code
// where a failure means the program cannot go on (socket, bind at start-up).
#pragma once

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

// Builds "PROG: WHAT ADDRESS: REASON"; ADDRESS may be empty, and is then left out.
[[nodiscard]] std::string format_error(std::string_view what, std::string_view address,
                                       std::string_view reason);

// Prints one error line to stderr. The errno forms take the error number explicitly
// (save errno right after the failing call: printing may change it).
void report_error(std::string_view what, std::string_view address, int err);
void report_message(std::string_view what, std::string_view address, std::string_view reason);

// Prints "PROG: TEXT", for messages that name no call (`no reply from ADDR within 2s`).
void report(std::string_view text);

// Same, then exit(1).
[[noreturn]] void die(std::string_view text);
[[noreturn]] void die_error(std::string_view what, std::string_view address, int err);
[[noreturn]] void die_message(std::string_view what, std::string_view address,
                              std::string_view reason);

// The student kit's placeholder for code a student has yet to write: prints
// "PROG: not implemented: WHAT" and exits 1. todo<T>() does the same where a value of
// type T is expected (`const lab::Fd sock = lab::todo<lab::Fd>("...");`).
[[noreturn]] void not_implemented(std::string_view what);
template <typename T>
[[noreturn]] T todo(std::string_view what) {
    not_implemented(what);
}

}  // namespace lab
