// io.hpp - the I/O pieces every lab would otherwise copy.
#pragma once

#include <sys/time.h>
#include <sys/types.h>

#include <concepts>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "common/endpoint.hpp"
#include "common/error.hpp"

namespace lab {

// Writes all `size` bytes over short writes. False with errno on failure (EPIPE, EAGAIN
// after SO_SNDTIMEO ...), or EINTR on a stop signal: a peer that never reads can't hold us.
[[nodiscard]] bool write_all(int fd, const void* data, std::size_t size);
[[nodiscard]] inline bool write_all(int fd, std::string_view bytes) {
    return write_all(fd, bytes.data(), bytes.size());
}

// Waits at most `seconds` for fd to be readable (poll): false on timeout, error or stop.
[[nodiscard]] bool wait_readable(int fd, double seconds);
// Sleeps `seconds`, less if a stop signal comes (poll() on no descriptor, fd -1, at all).
inline void sleep_unless_stopped(double seconds) {
    (void)wait_readable(-1, seconds);
}

// A descriptor's input (stdin, usually) a line at a time, without '\n'; NULs pass. With
// poll(): fill() when the fd is readable, then next() until no complete line is left.
class LineReader {
  public:
    explicit LineReader(int fd) noexcept : fd_(fd) {}

    // One read() into the buffer: bytes read, 0 at end of input, -1 with errno set.
    ssize_t fill();
    // The next complete line if the buffer holds one; at end of input also the remainder.
    std::optional<std::string> next();
    // Blocking: std::nullopt at end of input (errno 0), an error, or a stop (errno EINTR).
    std::optional<std::string> read_line();
    [[nodiscard]] bool eof() const noexcept { return eof_; }

  private:
    int fd_;
    std::string buffer_;
    std::size_t searched_ = 0;  // buffer_ holds no '\n' before this
    bool eof_ = false;
};

// Prints "ready: PROTO ADDRESS" and flushes: tests and graders wait for this line.
void print_ready(std::string_view proto, std::string_view where);
inline void print_ready(std::string_view proto, const Endpoint& where) {
    print_ready(proto, format_address(where));
}
// Writes `bytes` and a newline to stdout and flushes: how a client prints one reply.
void print_payload(std::string_view bytes);

// One log line per event on stdout, off with --quiet: log("from ", peer, ": ", n, " bytes").
// Text is escaped (a peer chose it), numbers printed; one locked write per line.
class Log {
  public:
    explicit Log(bool quiet) noexcept : quiet_(quiet) {}

    template <typename... Parts>
    void operator()(const Parts&... parts) const {
        if (quiet_) return;
        std::string line;
        (append(line, parts), ...);
        write_line(std::move(line));
    }

  private:
    static void append(std::string& line, std::string_view text) { line += escape(text); }
    static void append(std::string& line, std::integral auto number) {
        line += std::to_string(number);
    }
    static void write_line(std::string line);
    bool quiet_;
};

// Seconds on the steady clock, for deadlines; and as the calls take them, rounded up: a
// small timeout never becomes 0 ("never" to SO_RCVTIMEO). seconds_text(2) is "2s".
[[nodiscard]] double now_seconds();
[[nodiscard]] timeval to_timeval(double seconds);
[[nodiscard]] int to_milliseconds(double seconds);
[[nodiscard]] std::string seconds_text(double seconds);

}  // namespace lab
