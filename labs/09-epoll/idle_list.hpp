// idle_list.hpp - lab 09's timers: its clients in the order they were last active.
//
// Answers silent clients, which would otherwise hold their places for ever. With one idle
// timeout for every client, the order of last activity is also the order of deadlines:
// a list threaded through a vector indexed by descriptor is then a timer queue whose
// front is due first, touch() moves a client to the back in O(1), and nothing is
// allocated per event (a min-heap would do as well, at O(log n) per touch).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "common/io.hpp"

class IdleList {
  public:
    // `fd` was active: it goes to the back of the list, due at `deadline`.
    void touch(int fd, double deadline) {
        remove(fd);
        if (static_cast<std::size_t>(fd) >= links_.size()) links_.resize(fd + 1UL);
        Link& link = at(fd);
        link.deadline = deadline;
        link.older = std::exchange(newest_, fd);
        (link.older == -1 ? oldest_ : at(link.older).newer) = fd;
    }
    // `fd` leaves the list (it is closed), if it is in it.
    void remove(int fd) {
        if (static_cast<std::size_t>(fd) >= links_.size()) return;
        Link& link = at(fd);
        if (link.older == -1 && oldest_ != fd) return;  // not in the list
        (link.older == -1 ? oldest_ : at(link.older).newer) = link.newer;
        (link.newer == -1 ? newest_ : at(link.newer).older) = link.older;
        link.older = link.newer = -1;
    }
    // The client due first, or -1 when there is none; its deadline.
    [[nodiscard]] int oldest() const { return oldest_; }
    [[nodiscard]] double deadline(int fd) const {
        return links_[static_cast<std::size_t>(fd)].deadline;
    }
    // How long a wait may sleep at `now`: until the first deadline, -1 (for ever) with none.
    [[nodiscard]] int milliseconds_left(double now) const {
        return oldest_ == -1 ? -1 : lab::to_milliseconds(deadline(oldest_) - now);
    }

  private:
    struct Link {
        double deadline = 0;  // seconds on the steady clock (lab::now_seconds())
        int older = -1, newer = -1;
    };
    Link& at(int fd) { return links_[static_cast<std::size_t>(fd)]; }
    std::vector<Link> links_;  // indexed by descriptor
    int oldest_ = -1, newest_ = -1;
};
