// 05-tcp-threads client: two threads, as in UNP's threads/strclithread.c. A writer thread
// copies standard input to the socket as it comes, then shuts down its sending side; main
// copies the socket to standard output until the server closes. Each blocks in its own
// read(), so a long line never deadlocks the client: the echo is read while it is written.
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

constexpr std::uint16_t kDefaultPort = 9905;
constexpr double kDefaultTimeout = 10;
constexpr std::size_t kBufferSize = 16384;

constexpr const char* kUsage = R"(usage: client [OPTIONS] [HOST [PORT]]
TCP echo client with two threads: sends each line of stdin, prints what comes back.
  -H, --host ADDR        server address (default 127.0.0.1)
  -p, --port N           server port (default 9905)
      --timeout SECONDS  give up when a reply is due and nothing came for that long (10)
      --help             this text
)";

using Clock = std::chrono::steady_clock;

// What the writer thread tells main. Atomics: each is written by one thread, read by the other.
struct Progress {
    std::atomic<unsigned long long> sent{0};  // bytes written to the socket so far
    std::atomic<Clock::rep> last_sent{0};     // when, as Clock::now().time_since_epoch()
    std::atomic<bool> input_done{false};      // end of input reached, FIN sent
};

static void send_input(int sock, Progress& progress);
static double seconds_since(Clock::rep then);

int main(int argc, char** argv) {
    double timeout = kDefaultTimeout;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &timeout);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_STREAM);
    const std::string server_text = lab::format_address(server);

    // 1. socket() and 2. connect(). A Ctrl-C here ends the client at once (the default).
    const lab::Fd sock(socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    if (connect(sock.get(), server.addr(), server.size) == -1) lab::die("connect", server_text);
    lab::handle_signals();

    // 3. The writer thread, started with every signal blocked (a thread inherits the mask):
    //    SIGINT and SIGTERM then interrupt main, which can end the process; the writer may
    //    be asleep in read() on the terminal, where nothing could wake it.
    Progress progress;
    sigset_t all, main_mask;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &main_mask);
    try {
        std::thread(send_input, sock.get(), std::ref(progress)).detach();
    } catch (const std::system_error& e) {
        lab::fatal(std::string("no writer thread: ") + e.what());
    }
    pthread_sigmask(SIG_SETMASK, &main_mask, nullptr);

    // 4. Main copies the socket to stdout until the server's FIN.
    std::vector<char> buffer(kBufferSize);
    unsigned long long received = 0;
    Clock::rep last_read = Clock::now().time_since_epoch().count();
    while (!lab::stop_requested()) {
        const bool owed = received < progress.sent || progress.input_done;
        const double quiet = std::min(seconds_since(last_read), seconds_since(progress.last_sent));
        if (owed && quiet >= timeout) {
            lab::fatal("no reply from " + server_text + " for " + lab::seconds_text(timeout));
        }
        if (!lab::wait_readable(sock.get(), owed ? timeout - quiet : timeout)) continue;
        const ssize_t n = read(sock.get(), buffer.data(), buffer.size());
        if (n == -1 && errno == EINTR) continue;  // a signal: back to the loop's check
        if (n == -1) lab::die("read", server_text);
        if (n == 0) break;
        std::fwrite(buffer.data(), 1, static_cast<std::size_t>(n), stdout);
        std::fflush(stdout);
        received += static_cast<unsigned long long>(n);
        last_read = Clock::now().time_since_epoch().count();
    }
    // 5. The end. A stop signal: exit() ends the writer too, wherever it is, and unlike a
    //    return it runs no destructor: the socket is not closed under the writer's feet.
    //    The server's FIN: an echo sends back exactly what it got, once our input ended.
    if (lab::stop_requested()) std::exit(lab::kExitFailure);  // stopped before the end
    if (received == progress.sent && progress.input_done) return lab::kExitOk;
    if (received == progress.sent) lab::fatal(server_text + " closed the connection");
    lab::fatal(server_text + " sent " + std::to_string(received) + " bytes for the " +
               std::to_string(progress.sent) + " we sent: not an echo");
}

// The writer thread: standard input to the socket as it comes (a line at a time from a
// terminal), then shutdown(SHUT_WR), the FIN that says "that was all" while the reading half
// stays open for the rest of the echo. A last line without a newline gets one. If a write
// fails (the server went away), it stops; main sees why on its side of the socket.
static void send_input(int sock, Progress& progress) {
    pthread_setname_np(pthread_self(), "writer");  // what ps -L and top -H show
    // TASK 05.send-input
    std::vector<char> buffer(kBufferSize);
    char last = '\n';
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buffer.data(), buffer.size());
        if (n == -1) lab::die("read", "stdin");
        if (n == 0 && last == '\n') break;  // the end of input
        if (n == 0) {                       // the end of input in mid-line: finish the line first
            buffer[0] = '\n';
            n = 1;
        }
        progress.sent += static_cast<unsigned long long>(n);  // a reply is due from now on
        progress.last_sent = Clock::now().time_since_epoch().count();
        if (!lab::write_all(sock, buffer.data(), static_cast<std::size_t>(n))) return;
        last = buffer[static_cast<std::size_t>(n) - 1];
    }
    progress.input_done = true;
    shutdown(sock, SHUT_WR);
    // END TASK
}

static double seconds_since(Clock::rep then) {
    return std::chrono::duration<double>(Clock::now() - Clock::time_point(Clock::duration(then)))
        .count();
}
