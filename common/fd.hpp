// fd.hpp - a move-only owner of one file descriptor: every socket in the labs lives in an
// Fd, so it is closed exactly once, when its owner goes out of scope, on every path.
#pragma once

#include <unistd.h>

#include <utility>

namespace lab {

class Fd {
  public:
    Fd() noexcept = default;
    explicit Fd(int fd) noexcept : fd_(fd) {}
    ~Fd() { reset(); }

    Fd(const Fd&) = delete;  // two owners would close the same number twice
    Fd& operator=(const Fd&) = delete;
    Fd(Fd&& other) noexcept : fd_(other.release()) {}
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) reset(other.release());
        return *this;
    }

    [[nodiscard]] int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    // Gives up ownership without closing: the caller now owns the number.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

    // Closes what it held, then owns `fd`. No retry of close(): EINTR frees it too on Linux.
    void reset(int fd = -1) noexcept {
        const int old = std::exchange(fd_, fd);
        if (old >= 0) ::close(old);
    }

  private:
    int fd_ = -1;
};

}  // namespace lab
