// signals.hpp - the two signal decisions every lab makes at start-up.
//
// 1. SIGPIPE is ignored: writing to a peer that has gone away then fails with EPIPE,
//    which the lab handles for that one peer, instead of killing the whole program.
// 2. SIGINT and SIGTERM set a flag (and nothing else: only async-signal-safe work belongs
//    in a handler). They are installed without SA_RESTART, so a blocking call such as
//    accept() or recvfrom() returns -1 with EINTR and the loop can look at the flag.
//
// A signal that lands between the loop's check of the flag and the blocking call is only
// seen at the next event; event loops that must never miss it use ppoll()/epoll_pwait()
// with a signal mask, or a self-pipe (labs 07 to 09 explain this).
#pragma once

namespace lab {

void ignore_sigpipe();
void install_stop_handlers();
[[nodiscard]] bool stop_requested() noexcept;
// The signal that asked to stop (SIGINT or SIGTERM), or 0.
[[nodiscard]] int stop_signal() noexcept;

}  // namespace lab
