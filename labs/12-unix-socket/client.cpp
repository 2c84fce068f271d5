// 12-unix-socket client: the echo client on a Unix socket, in three modes.
//   stream (default)  sends its input and prints the echo, reading while it writes.
//   --dgram           one line, one datagram; it first binds a name of its own, since a
//                     datagram server can only answer a sender that has one.
//   --send-fd FILE    opens FILE and passes the open descriptor to the server (SCM_RIGHTS),
//                     which reads the file through it and sends back what it read.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"
#include "labs/12-unix-socket/unix_address.hpp"

namespace {

constexpr std::size_t kBufferSize = 65536;  // one read; also the largest datagram
constexpr double kDefaultTimeout = 10;      // --timeout: seconds to wait for a reply,
constexpr double kDefaultDgramTimeout = 2;  // and with --dgram

constexpr const char* kUsage =
    R"(usage: client [--path PATH | --abstract NAME] [--dgram] [--timeout SECONDS]
       client [--path PATH | --abstract NAME] --send-fd FILE [--timeout SECONDS]
Unix domain socket echo client: sends each line of stdin, prints what comes back.
      --path PATH        the server's socket file (default ./lab12.sock)
      --abstract NAME    the server's Linux abstract name (shown as @NAME)
      --dgram            datagram mode: one line, one datagram
      --send-fd FILE     pass FILE's open descriptor to the server, print what comes back
      --timeout SECONDS  give up when no reply comes for this long (default 10; --dgram 2)
      --help             this text
)";

int talk_stream(int sock, const std::string& server, double timeout);
int talk_datagrams(int sock, const std::string& server, double timeout);
int pass_file(int sock, int file, const std::string& name, const std::string& server,
              double timeout);

}  // namespace

int main(int argc, char** argv) {
    lab12::Where where;
    std::string file_name;
    double timeout = 0;
    lab::Args args(kUsage);
    args.option("--send-fd", &file_name);
    args.seconds("--timeout", &timeout);
    where.parse(args, argc, argv);
    if (args.given("--send-fd") && where.dgram) args.usage_error("--send-fd needs a stream");
    if (args.given("--send-fd") && file_name.empty()) args.usage_error("empty --send-fd FILE");
    if (!args.given("--timeout")) timeout = where.dgram ? kDefaultDgramTimeout : kDefaultTimeout;
    const std::string server = lab::format_address(where.address);
    lab::handle_signals();
    // --send-fd: we open the file, with our own rights; the server never sees its name.
    const lab::Fd file(file_name.empty() ? -1 : open(file_name.c_str(), O_RDONLY | O_CLOEXEC));
    if (!file_name.empty() && !file) lab::die("open", file_name);

    // 1. socket(): AF_UNIX, a stream or a datagram socket, like the server's.
    const lab::Fd sock(socket(AF_UNIX, where.type() | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. bind(): the notes' client binds "client.sock". A stream client need not (its end
    //    stays unnamed), but a datagram client must, or the server has no name to answer.
    //    A fixed name would be fought over by two clients: with an address of no more
    //    than the family, Linux picks a free abstract name ("autobind", unix(7)).
    const sockaddr_un any{AF_UNIX, {}};
    if (where.dgram &&
        bind(sock.get(), reinterpret_cast<const sockaddr*>(&any), sizeof(sa_family_t)) == -1) {
        lab::die("bind");
    }

    // 3. connect(): for a stream, to the listening server. For datagrams it sends nothing:
    //    it fixes the peer, so send() and recv() need no address and others are refused.
    if (connect(sock.get(), where.address.addr(), where.address.size) == -1) {
        lab::die("connect", server);
    }

    // 4. Talk: stream, datagrams, or one descriptor.
    if (file) return pass_file(sock.get(), file.get(), file_name, server, timeout);
    if (where.dgram) return talk_datagrams(sock.get(), server, timeout);
    return talk_stream(sock.get(), server, timeout);
}

namespace {

int no_reply(const std::string& server, double timeout) {
    if (lab::stop_requested()) return lab::kExitFailure;  // stopped before the end
    lab::fatal("no reply from " + server + " within " + lab::seconds_text(timeout));
}

// A stream has no message boundaries: the input goes out as it comes, the echo is printed
// as it comes back. poll() watches both, so neither side ever waits on the other: a line
// longer than both socket buffers still passes. At the end of the input, shutdown(SHUT_WR)
// tells the server, which closes once it has echoed everything. While we wait for it, it
// has `timeout` seconds to show a sign of life.
int talk_stream(int sock, const std::string& server, double timeout) {
    using Clock = std::chrono::steady_clock;
    std::vector<char> buffer(kBufferSize);
    std::string out;  // read from stdin, not yet sent
    unsigned long long sent = 0;
    unsigned long long echoed = 0;
    bool input_open = true;
    bool shut = false;
    char last_byte = '\n';
    auto news = Clock::now();  // the last time anything moved
    while (!lab::stop_requested()) {
        const bool waiting = echoed < sent || !out.empty() || !input_open;
        const double left = timeout - std::chrono::duration<double>(Clock::now() - news).count();
        if (waiting && left <= 0) return no_reply(server, timeout);
        pollfd fds[2] = {{sock, static_cast<short>(out.empty() ? POLLIN : POLLIN | POLLOUT), 0},
                         {input_open && out.size() < kBufferSize ? STDIN_FILENO : -1, POLLIN, 0}};
        if (poll(fds, 2, waiting ? lab::to_milliseconds(left) : -1) <= 0) continue;  // EINTR
        news = Clock::now();
        if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
            const ssize_t n = read(sock, buffer.data(), buffer.size());
            if (n == 0 && (echoed < sent || !shut)) lab::fatal("connection closed by " + server);
            if (n == 0) return lab::kExitOk;
            if (n == -1 && errno != EINTR) lab::die("read", server);
            if (n > 0) {
                std::fwrite(buffer.data(), 1, static_cast<std::size_t>(n), stdout);
                std::fflush(stdout);
                echoed += static_cast<std::size_t>(n);
            }
        }
        if ((fds[0].revents & POLLOUT) != 0) {
            const ssize_t n = send(sock, out.data(), out.size(), MSG_DONTWAIT);
            if (n == -1 && errno != EAGAIN && errno != EINTR) lab::die("send", server);
            if (n > 0) {
                out.erase(0, static_cast<std::size_t>(n));
                sent += static_cast<std::size_t>(n);
            }
        }
        if (fds[1].revents != 0) {
            const ssize_t n = read(STDIN_FILENO, buffer.data(), buffer.size());
            if (n == -1 && errno != EINTR && errno != EAGAIN) lab::die("read", "stdin");
            if (n > 0) out.append(buffer.data(), static_cast<std::size_t>(n));
            if (n > 0) last_byte = buffer[static_cast<std::size_t>(n) - 1];
            if (n == 0 && last_byte != '\n') out += '\n';  // the last line gets its newline
            if (n == 0) input_open = false;
        }
        if (!input_open && out.empty() && !shut) {
            shut = true;
            shutdown(sock, SHUT_WR);  // the end of our input, for the server too
        }
    }
    return lab::kExitFailure;  // stopped by a signal before the end
}

// One line, one datagram, and its reply within `timeout`: a datagram has no connection
// that could break, so without a timer a lost reply or a dead server would hang us.
int talk_datagrams(int sock, const std::string& server, double timeout) {
    const timeval limit = lab::to_timeval(timeout);  // send() waits while the server's
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);  // queue is full
    lab::LineReader input(STDIN_FILENO);
    std::vector<char> reply(kBufferSize);
    while (auto line = input.read_line()) {
        if (send(sock, line->data(), line->size(), 0) == -1 && !lab::stop_requested()) {
            lab::die("send", server);
        }
        if (!lab::wait_readable(sock, timeout)) return no_reply(server, timeout);
        const ssize_t n = recv(sock, reply.data(), reply.size(), MSG_DONTWAIT);
        if (n == -1) lab::die("recv", server);
        lab::print_payload({reply.data(), static_cast<std::size_t>(n)});
    }
    if (errno != 0 && !lab::stop_requested()) lab::die("read", "stdin");
    return lab::stop_requested() ? lab::kExitFailure : lab::kExitOk;
}

// sendmsg() with an SCM_RIGHTS control message holding `fd`: the kernel installs, in the
// receiver's table, a new descriptor for the same open file. A control message needs at
// least one byte of data to ride on: send one NUL byte. Returns what sendmsg() returns.
ssize_t send_descriptor(int sock, int fd) {
    // TASK 12.sendmsg
    // KIT: return lab::todo<ssize_t>("12.sendmsg");
    char carrier = '\0';
    iovec data{&carrier, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &data;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* header = CMSG_FIRSTHDR(&msg);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(header), &fd, sizeof fd);
    return sendmsg(sock, &msg, 0);
    // END TASK
}

// Passes the file, then prints what the server sends back (its content) until the server
// closes, and says so when that was not the whole file (the server sends 1 MiB at most).
int pass_file(int sock, int file, const std::string& name, const std::string& server,
              double timeout) {
    if (send_descriptor(sock, file) != 1) lab::die("sendmsg", server);
    shutdown(sock, SHUT_WR);  // nothing more from us
    std::vector<char> buffer(kBufferSize);
    unsigned long long received = 0;
    for (;;) {
        if (!lab::wait_readable(sock, timeout)) return no_reply(server, timeout);
        const ssize_t n = read(sock, buffer.data(), buffer.size());
        if (n == -1) lab::die("read", server);
        if (n == 0) break;
        std::fwrite(buffer.data(), 1, static_cast<std::size_t>(n), stdout);
        received += static_cast<std::size_t>(n);
    }
    std::fflush(stdout);
    struct stat st {};
    if (fstat(file, &st) == 0 && S_ISREG(st.st_mode) &&
        received != static_cast<unsigned long long>(st.st_size)) {
        lab::fatal("got " + std::to_string(received) + " bytes back; " + name + " has " +
                   std::to_string(st.st_size));
    }
    return lab::kExitOk;
}

}  // namespace
