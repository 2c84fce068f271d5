#include "common/signals.hpp"

#include <atomic>
#include <ctime>

namespace lab {
namespace {

// What a handler may touch: a lock-free atomic (safe in it, read by any thread), and a
// timer made before any handler exists.
std::atomic<int> g_stop_signal = 0;
timer_t g_watchdog{};
bool g_has_watchdog = false;

extern "C" void on_stop_signal(int signo) {
    int none = 0;
    if (!g_stop_signal.compare_exchange_strong(none, signo)) return;  // the first one counts
    const itimerspec every_50ms{{0, 50'000'000}, {0, 50'000'000}};
    if (g_has_watchdog) timer_settime(g_watchdog, 0, &every_50ms, nullptr);  // signal-safe
}

extern "C" void on_alarm(int /*signo*/) {}  // it only has to interrupt a blocking call

void catch_signal(int signo, void (*handler)(int)) {
    struct sigaction action {};
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR so loops notice
    sigaction(signo, &action, nullptr);
}

}  // namespace

void handle_signals() {
    catch_signal(SIGPIPE, SIG_IGN);
    sigevent alarm{};
    alarm.sigev_notify = SIGEV_SIGNAL;
    alarm.sigev_signo = SIGALRM;
    g_has_watchdog = timer_create(CLOCK_MONOTONIC, &alarm, &g_watchdog) == 0;
    catch_signal(SIGALRM, on_alarm);
    catch_signal(SIGINT, on_stop_signal);
    catch_signal(SIGTERM, on_stop_signal);
}

bool stop_requested() noexcept {
    return g_stop_signal != 0;
}

const char* stop_signal_name() noexcept {
    const int signo = g_stop_signal;
    return signo == SIGINT ? "SIGINT" : signo == SIGTERM ? "SIGTERM" : "";
}

}  // namespace lab
