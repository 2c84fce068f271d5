#include "common/io.hpp"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <mutex>

#include "common/signals.hpp"

namespace lab {

bool write_all(int fd, const void* data, std::size_t size) {
    const auto* bytes = static_cast<const char*>(data);
    while (size > 0) {
        const ssize_t n = ::write(fd, bytes, size);
        if (n == -1 && errno == EINTR && !stop_requested()) continue;  // a signal: go on
        if (n == -1) return false;
        bytes += n;  // a short write: go round again with the rest
        size -= static_cast<std::size_t>(n);
        if (size > 0 && stop_requested()) {  // cut short by the stop signal itself
            errno = EINTR;
            return false;
        }
    }
    return true;
}

bool wait_readable(int fd, double seconds) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    for (std::chrono::duration<double> left = deadline - Clock::now(); left.count() > 0;
         left = deadline - Clock::now()) {
        pollfd p{fd, POLLIN, 0};
        const int ready = poll(&p, 1, to_milliseconds(left.count()));
        if (ready > 0) return true;
        if ((ready == -1 && errno != EINTR) || stop_requested()) return false;
    }
    return false;
}

ssize_t LineReader::fill() {
    char chunk[65536];
    const ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n == 0) eof_ = true;
    if (n > 0) buffer_.append(chunk, static_cast<std::size_t>(n));
    return n;
}

std::optional<std::string> LineReader::next() {
    auto newline = buffer_.find('\n', searched_);  // never the same bytes twice: long lines
    searched_ = newline == std::string::npos ? buffer_.size() : 0;
    if (newline == std::string::npos && (!eof_ || buffer_.empty())) return std::nullopt;
    if (newline == std::string::npos) newline = buffer_.size();  // a last line without '\n'
    std::string line = buffer_.substr(0, newline);
    buffer_.erase(0, newline + 1);
    return line;
}

std::optional<std::string> LineReader::read_line() {
    for (;;) {
        if (auto line = next()) return line;
        if (eof_) {
            errno = 0;
            return std::nullopt;
        }
        if (fill() == -1 && (errno != EINTR || stop_requested())) return std::nullopt;
    }
}

void print_ready(std::string_view proto, std::string_view where) {
    const std::string line = "ready: " + std::string(proto) + " " + escape(where) + "\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fflush(stdout);
}

void print_payload(std::string_view bytes) {
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

void Log::write_line(std::string line) {
    static std::mutex lock;
    line += '\n';
    const std::lock_guard<std::mutex> guard(lock);
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fflush(stdout);
}

double now_seconds() {
    const auto since = std::chrono::steady_clock::now().time_since_epoch();
    return std::chrono::duration<double>(since).count();
}

timeval to_timeval(double seconds) {
    const auto micros = std::max(1LL, static_cast<long long>(std::ceil(seconds * 1e6)));
    return {static_cast<time_t>(micros / 1'000'000), static_cast<suseconds_t>(micros % 1'000'000)};
}

int to_milliseconds(double seconds) {
    const double millis = std::ceil(seconds * 1e3);
    return millis < 1 ? 1 : millis > INT_MAX ? INT_MAX : static_cast<int>(millis);
}

std::string seconds_text(double seconds) {
    char text[32];
    std::snprintf(text, sizeof text, "%gs", seconds);
    return text;
}

}  // namespace lab
