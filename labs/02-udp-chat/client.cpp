// 02-udp-chat client: joins the relay, then does two things at once: sends each line of
// standard input as one datagram, and shows every datagram the server sends.
//
// Note 004's client forks, so that one process can block in recvfrom() while the other
// blocks reading the keyboard. This one waits on both descriptors with poll() and handles
// whichever is ready: one process, one owner of the socket, one place to exit. What the
// others wrote is shown escaped (lab::escape), so that their bytes cannot move the cursor,
// clear the screen or retitle the window of whoever reads them.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
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
constexpr double kDefaultTimeout = 2;       // seconds, for each answer while joining
constexpr double kDefaultKeepalive = 20;    // seconds: a third of the server's idle timeout
constexpr std::string_view kChallenge = "* /join ";  // "send back /join COOKIE"

constexpr const char* kUsage =
    R"(usage: client [--host ADDR] [--port N] [--timeout SECONDS] [--keepalive SECONDS]
       client [HOST [PORT]]
UDP chat client: joins the relay, sends each line of stdin, shows what others say.
  -H, --host ADDR          server address (default 127.0.0.1)
  -p, --port N             server port (default 9902)
      --timeout SECONDS    how long to wait for each answer while joining (default 2)
      --keepalive SECONDS  send an empty datagram after this long without sending, so
                           that the server does not forget us (default 20; keep it
                           below the server's --idle-timeout, 60 by default)
      --help               this text
Lines starting with / are commands: /nick NAME, /who, /quit. End of input sends /quit.
What others send is shown with control bytes escaped (\x1b, \r, \t ...).
)";

using Clock = std::chrono::steady_clock;

bool join(int sock, std::vector<char>& buffer, const std::string& server_text, double timeout);
void show(int sock, std::vector<char>& buffer, const std::string& server_text);
void send_line(int sock, std::string_view line, const std::string& server_text);

}  // namespace

int main(int argc, char** argv) {
    double timeout = kDefaultTimeout;
    double keepalive = kDefaultKeepalive;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &timeout);
    args.seconds("--keepalive", &keepalive);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_DGRAM);  // by hand in lab 01
    const std::string server_text = lab::format_address(server);
    lab::handle_signals();  // a stop signal interrupts poll() with EINTR, as in lab 01

    // 1. socket() and 2. connect(): no packet is sent, but the kernel picks our address
    //    and port now, drops datagrams from anyone but the server, and passes on the ICMP
    //    error if nothing listens there (lab 01's --connect).
    const lab::Fd sock(socket(server.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    if (connect(sock.get(), server.addr(), server.size) == -1) lab::die("connect", server_text);

    // 3. Join: prove that we receive at this address, and wait for the welcome.
    std::vector<char> buffer(kBufferSize);
    if (!join(sock.get(), buffer, server_text, timeout)) return lab::kExitOk;  // stopped

    // 4. poll() on standard input and the socket together, and handle whichever is ready:
    //    lines from the others appear while we type. poll()'s timeout is the keepalive:
    //    after --keepalive seconds without sending, an empty datagram says "still here".
    //    A stop signal interrupts poll() (EINTR), and the loop's test sees it.
    lab::LineReader input(STDIN_FILENO);
    std::array<pollfd, 2> watched{{{STDIN_FILENO, POLLIN, 0}, {sock.get(), POLLIN, 0}}};
    auto last_sent = Clock::now();
    while (!lab::stop_requested() && !input.eof()) {
        // TASK 02.watch
        const std::chrono::duration<double> quiet = Clock::now() - last_sent;
        const int n_ready =
            poll(watched.data(), watched.size(), lab::to_milliseconds(keepalive - quiet.count()));
        if (n_ready == -1 && errno != EINTR) lab::die("poll");
        if (n_ready == 0) {
            send_line(sock.get(), "", server_text);
            last_sent = Clock::now();
        }
        if (n_ready <= 0) continue;
        if (watched[1].revents != 0) show(sock.get(), buffer, server_text);
        if (watched[0].revents != 0) {
            if (input.fill() == -1 && errno != EINTR) lab::die("read", "stdin");
            while (auto line = input.next()) {
                send_line(sock.get(), *line, server_text);
            }
            last_sent = Clock::now();
        }
        // END TASK
    }

    // 5. Say goodbye, so the others hear of it now and not after the idle timeout.
    send_line(sock.get(), "/quit", server_text);
    return lab::kExitOk;
}

namespace {

// recv() one datagram, without the '\n' the server ends each with. MSG_DONTWAIT: it is
// called when poll() said the socket is readable, and must never block. ECONNREFUSED is
// the ICMP "port unreachable" passed on: nothing (any longer) listens at the server's
// address, and the client ends.
std::optional<std::string_view> receive(int sock, std::vector<char>& buffer,
                                        const std::string& server_text) {
    const ssize_t n = recv(sock, buffer.data(), buffer.size(), MSG_DONTWAIT);
    if (n == -1 && (errno == EINTR || errno == EAGAIN)) return std::nullopt;
    if (n == -1) lab::die("recv", server_text);
    std::string_view datagram(buffer.data(), static_cast<std::size_t>(n));
    if (datagram.ends_with('\n')) datagram.remove_suffix(1);
    return datagram;
}

// Joins the room. Sends "/join"; the server answers an address it does not know with the
// line to send back, "* /join COOKIE", which reaches us only if we do receive at this
// address. Sent back, it brings "* welcome ADDR, N online" (or "* server busy", which ends
// the client). UDP gives no other sign that a server is there, so each answer is awaited
// at most `timeout` seconds. Prints the ready line, with our own address, and the welcome.
// Returns false if a stop signal ended the wait.
bool join(int sock, std::vector<char>& buffer, const std::string& server_text, double timeout) {
    // TASK 02.join
    send_line(sock, "/join", server_text);
    while (lab::wait_readable(sock, timeout)) {
        const auto answer = receive(sock, buffer, server_text);
        if (!answer) continue;
        if (answer->starts_with(kChallenge)) {
            send_line(sock, answer->substr(2), server_text);
            continue;
        }
        if (!answer->starts_with("* welcome ")) {
            lab::fatal("not welcome at " + server_text + ": " + std::string(*answer));
        }
        const auto local = lab::local_endpoint(sock);
        if (!local) lab::die("getsockname");
        lab::print_ready("udp", *local);
        lab::print_payload(lab::escape(*answer));
        return true;
    }
    if (lab::stop_requested()) return false;
    lab::fatal("no welcome from " + server_text + " within " + lab::seconds_text(timeout));
    // END TASK
}

// Shows one datagram from the server, escaped: the ESC, CR or BEL that someone put in a
// line appear as \x1b, \r, \x07 instead of acting on the terminal; UTF-8 text (Chinese
// names, say) passes as it is. A challenge means the server has forgotten us (we were
// idle, or it restarted): answering it brings us back in, and the welcome is shown.
void show(int sock, std::vector<char>& buffer, const std::string& server_text) {
    const auto datagram = receive(sock, buffer, server_text);
    if (!datagram) return;
    if (datagram->starts_with(kChallenge)) {
        send_line(sock, datagram->substr(2), server_text);
    } else {
        lab::print_payload(lab::escape(*datagram));
    }
}

// One line, one datagram. A line too long for UDP (EMSGSIZE) is reported and skipped;
// ECONNREFUSED, an ICMP error for an earlier datagram, means there is no server: the end.
void send_line(int sock, std::string_view line, const std::string& server_text) {
    if (send(sock, line.data(), line.size(), 0) == -1) {
        if (errno == ECONNREFUSED) lab::die("send", server_text);
        lab::warn("send", server_text);
    }
}

}  // namespace
