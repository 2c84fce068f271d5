// signals.hpp - how every lab stops within a second of SIGINT or SIGTERM, with status 0.
//
// handle_signals(), once at start-up, ignores SIGPIPE (a write to a vanished peer fails
// with EPIPE) and catches SIGINT and SIGTERM with a handler that sets a flag, without
// SA_RESTART: a blocking call returns -1 with EINTR, and the loop, which checks
// stop_requested() each time round, leaves. A signal landing after that check, before the
// call blocks, would find nothing to interrupt, so the handler also starts a 50 ms SIGALRM
// timer that interrupts the next blocking call too (lab 01's handout explains).
#pragma once

#include <csignal>

namespace lab {

void handle_signals();
[[nodiscard]] bool stop_requested() noexcept;
// "SIGINT" or "SIGTERM": the signal that asked to stop ("" before one came).
[[nodiscard]] const char* stop_signal_name() noexcept;

}  // namespace lab
