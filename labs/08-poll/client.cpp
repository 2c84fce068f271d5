// 08-poll client: the server's backpressure, seen from the client. The socket is
// non-blocking and the client keeps an output buffer: it reads standard input while the
// buffer has room, writes what the socket takes, and reads the echo all the while, in one
// poll() loop. No write() ever blocks it; when the server is slow, the buffer fills and the
// client simply stops reading its input (UNP's non-blocking str_cli, with poll()).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

constexpr std::uint16_t kDefaultPort = 9908;
constexpr double kDefaultTimeout = 10;       // seconds
constexpr std::size_t kChunk = 65536;        // the most read from stdin, or the socket, at once
constexpr std::size_t kMaxPending = 262144;  // input buffered for the socket, then stdin waits

constexpr const char* kUsage = R"(usage: client [--host ADDR] [--port N] [--timeout SECONDS]
       client [HOST [PORT]]
TCP echo client on poll(): sends standard input, prints what comes back.
  -H, --host ADDR        server address or name (default 127.0.0.1)
  -p, --port N           server port (default 9908)
      --timeout SECONDS  give up when the server sends nothing for this long (default 10)
)";

int main(int argc, char** argv) {
    double timeout = kDefaultTimeout;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &timeout);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_STREAM);
    const std::string where = lab::format_address(server);
    lab::handle_signals();

    // 1. socket() and 2. connect(), then O_NONBLOCK: from here on no call on the socket
    //    waits; a write() the socket cannot take fails with EAGAIN instead.
    const lab::Fd sock(socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    if (connect(sock.get(), server.addr(), server.size) == -1) {
        if (lab::stop_requested()) return lab::kExitFailure;  // EINTR: stopped meanwhile
        lab::die("connect", where);
    }
    if (fcntl(sock.get(), F_SETFL, fcntl(sock.get(), F_GETFL) | O_NONBLOCK) == -1) {
        lab::die("fcntl O_NONBLOCK", where);
    }

    std::string out;           // the output buffer: input read, not yet taken by the socket
    bool input_ended = false;  // stdin has reached its end
    bool shut = false;         // shutdown(SHUT_WR) done: the server has our FIN
    bool newline = true;       // the input so far ends with '\n'
    unsigned long long sent = 0, received = 0;
    double deadline = lab::now_seconds() + timeout;  // when to give up if no reply comes
    char chunk[kChunk];
    pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {sock.get(), 0, 0}};
    while (!lab::stop_requested()) {
        // 3. poll(): stdin while the buffer has room (backpressure: a full buffer stops
        //    the reading, not the program), the socket for the echo always, and for
        //    writing while the buffer holds bytes. The timeout runs while a reply is owed.
        // TASK 08.client-poll
        fds[0].fd = !input_ended && out.size() < kMaxPending ? STDIN_FILENO : -1;  // -1: skip it
        fds[1].events = out.empty() ? POLLIN : POLLIN | POLLOUT;
        const bool owed = received < sent || shut;
        const int ready =
            poll(fds, 2, owed ? lab::to_milliseconds(deadline - lab::now_seconds()) : -1);
        if (ready == -1 && errno == EINTR) continue;  // back to the check of the stop flag
        if (ready == -1) lab::die("poll");
        if (ready == 0) {
            lab::fatal("read " + where + ": no reply within " + lab::seconds_text(timeout));
        }
        // END TASK
        // 4. read() the echo and print exactly the bytes that came; 0 is the server's FIN.
        //    POLLERR and POLLHUP come unasked: then read() reports the error, or the FIN.
        if ((fds[1].revents & (POLLIN | POLLERR | POLLHUP)) != 0) {
            const ssize_t n = read(sock.get(), chunk, sizeof chunk);
            if (n == -1 && errno != EAGAIN && errno != EINTR) lab::die("read", where);
            if (n == 0) break;
            if (n > 0 && !lab::write_all(STDOUT_FILENO, chunk, static_cast<std::size_t>(n))) {
                if (lab::stop_requested()) break;
                lab::die("write", "stdout");
            }
            if (n > 0) received += static_cast<unsigned long long>(n);
            if (n > 0) deadline = lab::now_seconds() + timeout;
        }
        // 5. write() from the buffer what the socket takes; EAGAIN: the rest waits for POLLOUT.
        if (!out.empty() && (fds[1].revents & POLLOUT) != 0) {
            const ssize_t n = send(sock.get(), out.data(), out.size(), MSG_NOSIGNAL);
            if (n == -1 && errno != EAGAIN && errno != EINTR) lab::die("write", where);
            if (n > 0 && received == sent)
                deadline = lab::now_seconds() + timeout;  // the first byte owed
            if (n > 0) out.erase(0, static_cast<std::size_t>(n));
            if (n > 0) sent += static_cast<unsigned long long>(n);
        }
        // 6. read() input into the buffer's room; at its end, a last newline if it had none.
        if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
            const ssize_t n =
                read(STDIN_FILENO, chunk, std::min(sizeof chunk, kMaxPending - out.size()));
            if (n == -1 && errno != EINTR && errno != EAGAIN) lab::die("read", "stdin");
            if (n > 0) out.append(chunk, static_cast<std::size_t>(n));
            if (n > 0) newline = chunk[n - 1] == '\n';
            if (n == 0 && !newline) out += '\n';
            if (n == 0) input_ended = true;
        }
        // 7. shutdown(SHUT_WR) once the buffer is empty after the end of input: the server
        //    echoes the rest and closes; our side reads on until then.
        if (input_ended && out.empty() && !shut) {
            shutdown(sock.get(), SHUT_WR);  // if the connection is gone, read() will say so
            shut = true;
            deadline = lab::now_seconds() + timeout;
        }
    }
    if (lab::stop_requested()) return lab::kExitFailure;
    // 8. The server has closed. An echo sends back exactly what it got: fewer bytes is a
    //    server that stopped early, more is not an echo (a "server busy" refusal, say).
    if (received > sent) {
        lab::fatal(where + " sent " + std::to_string(received) + " bytes for the " +
                   std::to_string(sent) + " we sent: not an echo");
    }
    if (received < sent || !shut) {
        lab::fatal("connection closed by " + where + " after " + std::to_string(received) + " of " +
                   std::to_string(sent) + " bytes");
    }
    return lab::kExitOk;
}
