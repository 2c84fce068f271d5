// 12-unix-socket client: the echo client of lab 03 on a Unix socket, in three modes.
//
//   stream (default)  each line of stdin goes out with its newline; the echo is printed.
//   --dgram           each line is one datagram. The client first binds a name of its
//                     own, because a datagram server can only answer a named sender.
//   --send-fd FILE    opens FILE and passes the open descriptor to the server
//                     (SCM_RIGHTS); the server reads the file through it and sends the
//                     content back, which is printed.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"
#include "labs/12-unix-socket/unix_address.hpp"

namespace {

constexpr std::size_t kBufferSize = 65536;  // one read; also the largest datagram accepted

constexpr const char* kUsage =
    R"(usage: client [--path PATH | --abstract NAME] [--dgram] [--timeout SECONDS]
       client [--path PATH | --abstract NAME] --send-fd FILE
Unix domain socket echo client: sends each line of stdin, prints what comes back.
      --path PATH       server's socket file (default ./lab12.sock)
      --abstract NAME   server's Linux abstract name (shown as @NAME)
      --dgram           datagram mode: one line, one datagram
      --timeout SECONDS with --dgram: how long to wait for each reply (default 2)
      --send-fd FILE    pass FILE's open descriptor to the server, print what it sends back
      --help            this text
)";

using Clock = std::chrono::steady_clock;

// 1. socket() and 2. connect(): no bind(), the client's end stays unnamed.
lab::Fd connect_stream(const lab::Endpoint& server, const std::string& server_text) {
    // BEGIN SOLUTION: create a stream socket with socket() (AF_UNIX, SOCK_STREAM) and
    //   connect() it to `server` (retry on EINTR); report failures with lab::die()
    //   and return the socket
    // STUB: return lab::todo<lab::Fd>("lab 12: socket(AF_UNIX) and connect()");
    lab::Fd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    while (connect(sock.get(), server.addr(), server.size) == -1) {
        if (errno != EINTR) lab::die("connect", server_text);
    }
    return sock;
    // END SOLUTION
}

// ---------------------------------------------------------------- stream: like lab 03

int run_stream(const lab::Endpoint& server, const std::string& server_text) {
    const lab::Fd sock = connect_stream(server, server_text);
    // 3. A stream has no message boundaries: read until the echo has caught up with
    //    everything sent, however the bytes are split into reads.
    lab::LineReader input(STDIN_FILENO);
    unsigned long long sent = 0;
    unsigned long long received = 0;
    std::vector<char> buffer(kBufferSize);
    while (auto line = input.read_line()) {
        line->push_back('\n');
        if (!lab::write_all(sock.get(), *line)) lab::die("write", server_text);
        sent += line->size();
        while (received < sent) {
            const ssize_t n = read(sock.get(), buffer.data(), buffer.size());
            if (n == -1 && errno == EINTR) continue;
            if (n == -1) lab::die("read", server_text);
            if (n == 0) lab::fatal("connection closed by " + server_text);
            std::fwrite(buffer.data(), 1, static_cast<std::size_t>(n), stdout);
            received += static_cast<unsigned long long>(n);
        }
        std::fflush(stdout);
    }
    if (errno != 0) lab::die("read", "stdin");
    return lab::kExitOk;
}

// ---------------------------------------------------------------- --send-fd

// 3. sendmsg() with an SCM_RIGHTS control message: the kernel installs a new descriptor
//    for the same open file in the receiver's table. At least one byte of ordinary data
//    must travel with it on a stream socket, so one NUL byte carries it.
bool pass_descriptor(int sock, int fd) {
    // BEGIN SOLUTION: send `fd` with sendmsg(): one byte of data (a NUL) in the iovec and
    //   one control message of CMSG_SPACE(sizeof(int)) bytes, filled through
    //   CMSG_FIRSTHDR() with SOL_SOCKET, SCM_RIGHTS, CMSG_LEN(sizeof(int)) and the
    //   descriptor copied into CMSG_DATA(); retry on EINTR, return true once the byte is sent
    // STUB: return lab::todo<bool>("lab 12: sendmsg() with SCM_RIGHTS");
    char carrier = '\0';
    iovec data{&carrier, 1};
    std::vector<char> control(CMSG_SPACE(sizeof(int)));
    msghdr msg{};
    msg.msg_iov = &data;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* header = CMSG_FIRSTHDR(&msg);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(header), &fd, sizeof fd);
    for (;;) {
        if (sendmsg(sock, &msg, 0) == 1) return true;
        if (errno != EINTR) return false;
    }
    // END SOLUTION
}

int run_send_fd(const lab::Endpoint& server, const std::string& server_text,
                const std::string& file_name) {
    // The client opens the file with its own rights; the server never sees the name.
    const lab::Fd file(open(file_name.c_str(), O_RDONLY | O_CLOEXEC));
    if (!file) lab::die("open", file_name);
    struct stat st {};
    if (fstat(file.get(), &st) == -1) lab::die("fstat", file_name);
    const lab::Fd sock = connect_stream(server, server_text);
    if (!pass_descriptor(sock.get(), file.get())) lab::die("sendmsg", server_text);
    // 4. shutdown(SHUT_WR): nothing more from us; the server answers, then closes.
    if (shutdown(sock.get(), SHUT_WR) == -1) lab::die("shutdown", server_text);
    std::vector<char> buffer(kBufferSize);
    unsigned long long received = 0;
    for (;;) {
        const ssize_t n = read(sock.get(), buffer.data(), buffer.size());
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) lab::die("read", server_text);
        if (n == 0) break;
        std::fwrite(buffer.data(), 1, static_cast<std::size_t>(n), stdout);
        received += static_cast<unsigned long long>(n);
    }
    std::fflush(stdout);
    if (S_ISREG(st.st_mode) && received != static_cast<unsigned long long>(st.st_size)) {
        lab::fatal("got " + std::to_string(received) + " bytes back; " + file_name + " has " +
                   std::to_string(st.st_size));
    }
    return lab::kExitOk;
}

// ---------------------------------------------------------------- --dgram

// A fresh directory only we may enter (mkdtemp makes it 0700), holding our socket file.
// Both are removed when the object goes: every path out of run_dgram() returns, never exits.
class PrivateSocketDir {
  public:
    PrivateSocketDir() {
        const char* tmp = std::getenv("TMPDIR");
        std::string name =
            std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/lab12-XXXXXX";
        if (mkdtemp(name.data()) == nullptr) {
            error_ = errno;
            return;
        }
        dir_ = name;
        path_ = dir_ + "/client.sock";
    }
    ~PrivateSocketDir() {
        if (dir_.empty()) return;
        unlink(path_.c_str());
        rmdir(dir_.c_str());
    }
    PrivateSocketDir(const PrivateSocketDir&) = delete;
    PrivateSocketDir& operator=(const PrivateSocketDir&) = delete;

    [[nodiscard]] int error() const noexcept { return error_; }
    [[nodiscard]] const std::string& path() const noexcept { return path_; }

  private:
    std::string dir_;
    std::string path_;
    int error_ = 0;
};

// Like LineReader::read_line(), but gives up on SIGINT/SIGTERM so that the caller can
// still clean up.
std::optional<std::string> next_line(lab::LineReader& input) {
    for (;;) {
        if (auto line = input.next()) return line;
        if (input.eof() || lab::stop_requested()) return std::nullopt;
        if (input.fill() == -1 && errno != EINTR) return std::nullopt;
    }
}

bool wait_readable(int fd, Clock::time_point deadline) {
    for (;;) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0 || lab::stop_requested()) return false;
        pollfd p{fd, POLLIN, 0};
        const int ready = poll(&p, 1, static_cast<int>(left.count()));
        if (ready > 0) return true;
        if (ready == -1 && errno != EINTR) return false;
    }
}

// Sends one datagram and prints the reply; false (after saying why) on any failure.
bool exchange(int sock, const std::string& line, const std::string& server_text, double timeout,
              std::vector<char>& reply) {
    if (send(sock, line.data(), line.size(), 0) == -1) {
        lab::warn("send", server_text);
        return false;
    }
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(timeout));
    for (;;) {
        if (!wait_readable(sock, deadline)) {
            if (!lab::stop_requested()) {
                char seconds[32];
                std::snprintf(seconds, sizeof seconds, "%gs", timeout);
                lab::note("no reply from " + server_text + " within " + seconds);
            }
            return false;
        }
        const ssize_t n = recv(sock, reply.data(), reply.size(), 0);
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) {
            lab::warn("recv", server_text);
            return false;
        }
        lab::print_payload({reply.data(), static_cast<std::size_t>(n)});
        return true;
    }
}

int run_dgram(const lab::Endpoint& server, const std::string& server_text, double timeout) {
    lab::handle_signals();  // so SIGTERM still removes our socket file
    const PrivateSocketDir own;
    if (own.error() != 0) {
        lab::warn("mkdtemp", "", own.error());
        return lab::kExitFailure;
    }
    lab::Endpoint local;
    const std::string problem = lab12::make_unix_address(own.path(), false, &local);
    if (!problem.empty()) {
        lab::note("bind " + own.path() + ": " + problem + " (set TMPDIR to a shorter path)");
        return lab::kExitFailure;
    }
    // 1. socket() and 2. bind() our own name: the server's recvfrom() reports it.
    const lab::Fd sock(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock || bind(sock.get(), local.addr(), local.size) == -1) {
        lab::warn(sock ? "bind" : "socket", own.path());
        return lab::kExitFailure;
    }
    // 3. connect() sends nothing on a datagram socket: it fixes the peer, so send() and
    //    recv() need no address, and datagrams from anyone else are refused.
    if (connect(sock.get(), server.addr(), server.size) == -1) {
        lab::warn("connect", server_text);
        return lab::kExitFailure;
    }
    lab::LineReader input(STDIN_FILENO);
    std::vector<char> reply(kBufferSize);
    while (auto line = next_line(input)) {
        if (!exchange(sock.get(), *line, server_text, timeout, reply)) return lab::kExitFailure;
    }
    if (lab::stop_requested()) return lab::kExitFailure;
    if (!input.eof()) {
        lab::warn("read", "stdin");
        return lab::kExitFailure;
    }
    return lab::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
    lab12::Where where;
    std::string send_fd_file;
    double timeout = 2.0;
    lab::Args args(kUsage);
    lab12::add_address_options(args, &where);
    args.seconds("--timeout", &timeout);
    args.option("--send-fd", &send_fd_file);
    args.parse(argc, argv);
    if (args.given("--send-fd") && where.dgram)
        args.usage_error("--send-fd works on stream sockets only");
    if (args.given("--send-fd") && send_fd_file.empty())
        args.usage_error("empty file name for --send-fd");
    const lab::Endpoint server = lab12::address_from(args, where);
    const std::string server_text = lab::format_address(server);

    std::signal(SIGPIPE, SIG_IGN);  // a vanished peer makes write() fail with EPIPE

    if (args.given("--send-fd")) return run_send_fd(server, server_text, send_fd_file);
    if (where.dgram) return run_dgram(server, server_text, timeout);
    return run_stream(server, server_text);
}
