// 07-select client: UNP's str_cli with select(). One loop waits on standard input and on
// the socket at once, so echoes are read while input is still being sent: no stop and wait
// per line as in lab 03. At the end of input, shutdown(SHUT_WR) tells the server, and the
// client reads on until the server's FIN: then every byte sent has come back.
#include <sys/select.h>
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

constexpr std::uint16_t kDefaultPort = 9907;
constexpr double kDefaultTimeout = 10;  // seconds
constexpr std::size_t kChunk = 65536;   // the most read from stdin, or from the socket, at once

constexpr const char* kUsage = R"(usage: client [--host ADDR] [--port N] [--timeout SECONDS]
       client [HOST [PORT]]
TCP echo client on select(): sends standard input, prints what comes back.
  -H, --host ADDR        server address or name (default 127.0.0.1)
  -p, --port N           server port (default 9907)
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

    // 1. socket() and 2. connect(): Args::endpoint() took the address (lab 03 shows how).
    const lab::Fd sock(socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    if (connect(sock.get(), server.addr(), server.size) == -1) {
        if (lab::stop_requested()) return lab::kExitFailure;  // EINTR: stopped meanwhile
        lab::die("connect", where);
    }

    std::string pending;       // a chunk of input not yet sent (the socket took part of it)
    bool input_ended = false;  // stdin has reached its end
    bool shut = false;         // shutdown(SHUT_WR) done: the server has our FIN
    bool newline = true;       // the input so far ends with '\n'
    unsigned long long sent = 0, received = 0;
    double deadline = lab::now_seconds() + timeout;  // when to give up if no reply comes
    char chunk[kChunk];
    fd_set readable, writable;
    while (!lab::stop_requested()) {
        // 3. select() on both: stdin for reading while no chunk waits to be sent; the
        //    socket for reading always (the echo), for writing while a chunk waits. The
        //    timeout runs while a reply is owed: bytes sent not yet back, or the FIN.
        // TASK 07.client-select
        FD_ZERO(&readable);
        FD_ZERO(&writable);
        if (!input_ended && pending.empty()) FD_SET(STDIN_FILENO, &readable);
        FD_SET(sock.get(), &readable);
        if (!pending.empty()) FD_SET(sock.get(), &writable);
        const bool owed = received < sent || shut;
        timeval wait = lab::to_timeval(deadline - lab::now_seconds());
        const int ready =
            select(sock.get() + 1, &readable, &writable, nullptr, owed ? &wait : nullptr);
        if (ready == -1 && errno == EINTR) continue;  // back to the check of the stop flag
        if (ready == -1) lab::die("select");
        if (ready == 0) {
            lab::fatal("read " + where + ": no reply within " + lab::seconds_text(timeout));
        }
        // END TASK
        // 4. read() the echo and print it, exactly the bytes that came; 0 is the server's FIN.
        if (FD_ISSET(sock.get(), &readable)) {
            const ssize_t n = read(sock.get(), chunk, sizeof chunk);
            if (n == -1 && errno != EINTR) lab::die("read", where);
            if (n == 0) break;
            if (n > 0 && !lab::write_all(STDOUT_FILENO, chunk, static_cast<std::size_t>(n))) {
                if (lab::stop_requested()) break;
                lab::die("write", "stdout");
            }
            if (n > 0) received += static_cast<unsigned long long>(n);
            if (n > 0) deadline = lab::now_seconds() + timeout;
        }
        // 5. send() what the socket takes now; MSG_DONTWAIT: it never blocks, so the loop
        //    goes on reading echoes even when the server is slow to take our bytes.
        if (FD_ISSET(sock.get(), &writable)) {
            const ssize_t n =
                send(sock.get(), pending.data(), pending.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n == -1 && errno != EAGAIN && errno != EINTR) lab::die("write", where);
            if (n > 0) pending.erase(0, static_cast<std::size_t>(n));
            if (n > 0 && received == sent)
                deadline = lab::now_seconds() + timeout;  // the first byte owed
            if (n > 0) sent += static_cast<unsigned long long>(n);
        }
        // 6. read() the next chunk of input; at its end, a last newline if it had none.
        if (FD_ISSET(STDIN_FILENO, &readable)) {
            const ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
            if (n == -1 && errno != EINTR) lab::die("read", "stdin");
            if (n > 0) pending.assign(chunk, static_cast<std::size_t>(n));
            if (n > 0) newline = chunk[n - 1] == '\n';
            if (n == 0) input_ended = true;
            if (n == 0 && !newline) pending = "\n";
        }
        // 7. shutdown(SHUT_WR) once all input is sent: the server reads its end, echoes
        //    the rest and closes; our side stays open for reading until then.
        if (input_ended && pending.empty() && !shut) {
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
