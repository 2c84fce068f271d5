// signals.hpp - the two signal decisions every lab makes at start-up.
//
// 1. SIGPIPE is ignored: writing to a peer that has gone away then fails with EPIPE,
//    which the lab handles for that one peer, instead of killing the whole program.
// 2. SIGINT and SIGTERM set a flag (and nothing else: only async-signal-safe work belongs
//    in a handler). They are installed without SA_RESTART, so a blocking call such as
//    accept() or recvfrom() returns -1 with EINTR and the loop can look at the flag.
//
// A signal that lands between the loop's check of the flag and the blocking call is only
// seen at the next event. Programs that must never miss it block SIGINT and SIGTERM with
// block_stop_signals() and wait in pselect()/ppoll()/epoll_pwait() with the mask it
// returns: the wait unblocks them atomically, so they can land only there (labs 07 to
// 09 explain this).
#pragma once

#include <csignal>

namespace lab {

void ignore_sigpipe();
void install_stop_handlers();
[[nodiscard]] bool stop_requested() noexcept;
// The signal that asked to stop (SIGINT or SIGTERM), or 0.
[[nodiscard]] int stop_signal() noexcept;

// Blocks SIGINT and SIGTERM (in the calling thread, and in threads it starts later) and
// returns the mask to wait with: the previous one, without those two.
[[nodiscard]] sigset_t block_stop_signals();

}  // namespace lab
