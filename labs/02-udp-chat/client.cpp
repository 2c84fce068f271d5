// 02-udp-chat client: joins the relay, then does two things at once: sends each line of
// standard input as one datagram, and prints every datagram the server sends.
//
// Source 004's client forks so that one process can block in recvfrom() while the other
// blocks reading the keyboard. Here a single process waits on both descriptors with
// poll() and handles whichever is ready: one owner of the socket, one place that exits,
// and no child left running when the parent ends.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9902;
constexpr std::size_t kBufferSize = 65536;  // larger than any UDP payload

constexpr const char* kUsage =
    R"(usage: client [--host ADDR] [--port N] [--timeout SECONDS] [--keepalive SECONDS]
       client [HOST [PORT]]
UDP chat client: joins the relay, sends each line of stdin, prints what others say.
  -H, --host ADDR          server address (default 127.0.0.1)
  -p, --port N             server port (default 9902)
      --timeout SECONDS    how long to wait for the welcome (default 2)
      --keepalive SECONDS  send an empty datagram after this long without sending,
                           so the server does not forget us (default 60; 0: never)
      --help               this text
End of input sends /quit. Lines starting with / are commands: /nick NAME, /who, /quit.
)";

using Clock = std::chrono::steady_clock;

Clock::duration seconds(double value) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(value));
}

std::string seconds_text(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%gs", value);
    return text;
}

// poll()'s timeout in milliseconds until `deadline`; -1 (no limit) without one.
int ms_until(std::optional<Clock::time_point> deadline) {
    if (!deadline) return -1;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Clock::now());
    return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

// One datagram as a line: the server ends each with '\n', print_payload adds its own.
std::string_view without_newline(const std::vector<char>& buffer, ssize_t n) {
    std::string_view bytes(buffer.data(), static_cast<std::size_t>(n));
    if (bytes.ends_with('\n')) bytes.remove_suffix(1);
    return bytes;
}

// recv() on the connected socket. ECONNREFUSED is the kernel passing on an ICMP "port
// unreachable": no server is (any longer) listening there.
ssize_t receive(int sock, std::vector<char>& buffer, const std::string& server_text) {
    for (;;) {
        const ssize_t n = recv(sock, buffer.data(), buffer.size(), 0);
        if (n >= 0) return n;
        if (errno != EINTR) lab::die("recv", server_text);
    }
}

// One line, one datagram. A line too long for UDP (EMSGSIZE) is reported and skipped.
void send_line(int sock, std::string_view line, const std::string& server_text) {
    if (send(sock, line.data(), line.size(), 0) == -1) {
        if (errno == ECONNREFUSED) lab::die("send", server_text);
        lab::warn("send", server_text);
    }
}

// Waits for the answer to /join. UDP gives no other sign that a server is there.
void wait_for_welcome(int sock, std::vector<char>& buffer, const std::string& server_text,
                      double timeout) {
    const auto deadline = Clock::now() + seconds(timeout);
    while (!lab::stop_requested()) {
        pollfd ready{sock, POLLIN, 0};
        const int n_ready = poll(&ready, 1, ms_until(deadline));
        if (n_ready == -1 && errno != EINTR) lab::die("poll");
        if (n_ready == 0) {
            lab::fatal("no welcome from " + server_text + " within " + seconds_text(timeout));
        }
        if (n_ready != 1) continue;
        const std::string_view reply = without_newline(buffer, receive(sock, buffer, server_text));
        if (!reply.starts_with("* welcome ")) {
            lab::fatal("not welcome at " + server_text + ": " + std::string(reply));
        }
        const auto local = lab::local_endpoint(sock);
        if (!local) lab::die("getsockname");
        lab::print_ready("udp", *local);  // our own address, as the server sees it
        lab::print_payload(reply);
        return;
    }
}

}  // namespace

int main(int argc, char** argv) {
    double timeout = 2.0;
    double keepalive = 60.0;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &timeout);
    args.seconds("--keepalive", &keepalive);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_DGRAM);
    const std::string server_text = lab::format_address(server);

    lab::handle_signals();

    // 1. socket() and 2. connect(): no packet is sent, but the kernel now picks our local
    //    address and port, drops datagrams from anyone but the server, and reports the
    //    ICMP error if nothing listens there.
    // BEGIN SOLUTION: connect the socket to the server: socket() (server.family(),
    //   SOCK_DGRAM), then connect() it to `server`; on a failure call
    //   lab::die("socket"/"connect", server_text)
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 02: socket() and connect()");
    const lab::Fd sock(socket(server.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    if (connect(sock.get(), server.addr(), server.size) == -1) {
        lab::die("connect", server_text);
    }
    // END SOLUTION

    // 3. send() /join, and wait for the welcome before saying we are ready.
    std::vector<char> buffer(kBufferSize);
    send_line(sock.get(), "/join", server_text);
    wait_for_welcome(sock.get(), buffer, server_text, timeout);

    // BEGIN SOLUTION: poll() stdin and the socket together, until end of input or a stop
    //   signal. Socket readable: receive() the datagram into `buffer` and print it with
    //   lab::print_payload(without_newline(...)). Stdin readable: fill() a lab::LineReader
    //   on STDIN_FILENO once, then send_line() each complete line its next() returns.
    //   Keepalive: when nothing was sent for `keepalive` seconds (if > 0; ms_until() gives
    //   poll() its timeout), send_line() an empty line
    // 4. poll() on standard input and the socket together: whichever is ready goes first.
    lab::LineReader input(STDIN_FILENO);
    std::vector<pollfd> watched{{STDIN_FILENO, POLLIN, 0}, {sock.get(), POLLIN, 0}};
    auto last_sent = Clock::now();
    while (!lab::stop_requested() && !input.eof()) {
        const auto next_keepalive =
            keepalive > 0 ? std::optional(last_sent + seconds(keepalive)) : std::nullopt;
        const int n_ready = poll(watched.data(), watched.size(), ms_until(next_keepalive));
        if (n_ready == -1 && errno != EINTR) lab::die("poll");
        if (n_ready == 0) {  // quiet for a while: an empty datagram says we are still here
            send_line(sock.get(), "", server_text);
            last_sent = Clock::now();
        }
        if (n_ready <= 0) continue;
        if (watched[1].revents != 0) {
            lab::print_payload(without_newline(buffer, receive(sock.get(), buffer, server_text)));
        }
        if (watched[0].revents != 0) {
            if (input.fill() == -1 && errno != EINTR) lab::die("read", "stdin");
            while (auto line = input.next()) {
                send_line(sock.get(), *line, server_text);
            }
            last_sent = Clock::now();
        }
    }
    // END SOLUTION

    // 5. Say goodbye, so the others hear of it now and not after the idle timeout.
    send_line(sock.get(), "/quit", server_text);
    return lab::kExitOk;
}
