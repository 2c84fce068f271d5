#include "common/io.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <mutex>

namespace lab {

bool write_all(int fd, const void* data, std::size_t size) {
    const auto* bytes = static_cast<const char*>(data);
    while (size > 0) {
        const ssize_t n = ::write(fd, bytes, size);
        if (n == -1) {
            if (errno == EINTR) continue;  // a signal arrived before anything was written
            return false;
        }
        bytes += n;  // a short write: go round again with the rest
        size -= static_cast<std::size_t>(n);
    }
    return true;
}

ssize_t LineReader::fill() {
    char chunk[4096];
    const ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n == 0) eof_ = true;
    if (n > 0) buffer_.append(chunk, static_cast<std::size_t>(n));
    return n;
}

std::optional<std::string> LineReader::next() {
    const auto newline = buffer_.find('\n');
    if (newline != std::string::npos) {
        std::string line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        return line;
    }
    if (eof_ && !buffer_.empty()) {  // the last line had no newline
        std::string line;
        line.swap(buffer_);
        return line;
    }
    return std::nullopt;
}

std::optional<std::string> LineReader::read_line() {
    for (;;) {
        if (auto line = next()) return line;
        if (eof_) {
            errno = 0;
            return std::nullopt;
        }
        const ssize_t n = fill();
        if (n == -1 && errno != EINTR) return std::nullopt;
    }
}

void print_ready(std::string_view proto, std::string_view where) {
    std::string line = "ready: ";
    line += proto;
    line += ' ';
    line += where;
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fflush(stdout);
}

void print_ready(std::string_view proto, const Endpoint& where) {
    print_ready(proto, format_address(where));
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

}  // namespace lab
