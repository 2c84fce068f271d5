// 08-poll server: a TCP echo server that serves many clients from one thread.
//
// Each pass of the loop asks poll() which sockets are ready, then does only what cannot
// block: accept the connections that are waiting, read what has arrived, write what the
// socket takes now. Every client has its own output buffer, so a slow, silent or stalled
// client costs the others nothing. Unlike select(), poll() takes a list of descriptors
// of any value and any length: a std::vector<pollfd> that grows with the clients.
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
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

constexpr std::uint16_t kDefaultPort = 9908;
constexpr std::size_t kReadChunk = 16384;         // most bytes read from one client per pass
constexpr long long kDefaultMaxBuffer = 1 << 20;  // pending echo per client before we stop reading
// Descriptors that are not clients: stdin, stdout, stderr, the listening socket, the spare.
constexpr long long kReservedFds = 5;
constexpr long long kMaxClientsLimit = 1000000;   // the largest --max-clients accepted
constexpr long long kMaxBufferLimit = 1LL << 30;  // the largest --max-buffer accepted
constexpr timespec kAcceptRetry{1, 0};  // paused accepting (no descriptors): retry after this
constexpr std::string_view kBusy = "server busy\n";

constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--max-clients N] [--max-buffer BYTES] [--quiet]
       server [PORT]
TCP echo server: one thread, poll(), many clients at once.
  -H, --host ADDR         address to bind (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N            port to bind (default 9908; 0 lets the kernel choose)
      --max-clients N     clients served at once; one more gets "server busy"
                          (default: the descriptor limit less 5)
      --max-buffer BYTES  unsent echo per client before the server stops reading
                          from it (default 1048576)
      --quiet             no log line per event
      --help              this text
)";

struct Client {
    lab::Fd fd;
    std::string peer;  // "127.0.0.1:50312", for the log
    std::string out;   // received but not yet echoed: written when the socket takes it
    bool eof = false;  // the peer has finished sending: echo the rest, then close
};

struct Server {
    lab::Fd listen_fd;
    lab::Fd spare;  // held only to be closed when accept() fails with EMFILE
    std::vector<Client> clients;
    std::vector<pollfd> fds;  // fds[0] is the listening socket; fds[i + 1] is clients[i]
    std::vector<char> chunk = std::vector<char>(kReadChunk);
    std::size_t max_clients = 0;
    std::size_t max_buffer = 0;
    bool out_of_fds = false;     // EMFILE seen and logged; cleared by the next accept
    bool accept_paused = false;  // out of descriptors and no spare: wait for a close
    lab::Log log{false};
};

// What the descriptor limit allows: every client needs one. poll() adds no limit of its own.
long long default_max_clients() {
    long long fds = kMaxClientsLimit;
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
        fds = std::min(fds, static_cast<long long>(limit.rlim_cur));
    }
    return std::max(1LL, fds - kReservedFds);
}

lab::Fd open_listener(const lab::Endpoint& local) {
    // BEGIN SOLUTION: create the listening socket with socket(), non-blocking
    //   (local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC), set SO_REUSEADDR with
    //   setsockopt(), bind() it to `local`, listen() with SOMAXCONN and return the lab::Fd;
    //   on failure lab::die("socket" / "bind" / "listen", ...)
    // STUB: return lab::todo<lab::Fd>("lab 08: socket(), bind() and listen() in open_listener()");
    // 1. socket(), non-blocking: accept() must return EAGAIN, not wait, when the queue is
    //    empty (a client may reset between poll() and accept()).
    lab::Fd fd(socket(local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) lab::die("socket");
    const int on = 1;  // restart at once even while old connections sit in TIME_WAIT (lab 06)
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    // 2. bind() and 3. listen(), with the longest queue the kernel allows.
    if (bind(fd.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    if (listen(fd.get(), SOMAXCONN) == -1) lab::die("listen");
    return fd;
    // END SOLUTION
}

// Says "server busy" and closes. The socket is new, so its send buffer has room.
void refuse(lab::Fd fd) {
    if (fd && write(fd.get(), kBusy.data(), kBusy.size()) == -1) {
        // Nothing to do: the connection is turned away either way.
    }
}

// EMFILE: accept() cannot take the waiting connection, so poll() would report it again
// at once, forever. Free the spare descriptor, accept the connection, turn it away, take
// the spare back. Returns true when one was turned away (more may wait). Without a spare,
// accepting pauses until a client leaves or kAcceptRetry has passed.
bool shed_connection(Server& server) {
    if (!server.out_of_fds) server.log("out of descriptors: refusing new connections");
    server.out_of_fds = true;
    if (server.spare) {
        server.spare.reset();
        lab::Fd fd(accept4(server.listen_fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
        const bool shed = static_cast<bool>(fd);  // false: the queue was empty (EMFILE comes first)
        refuse(std::move(fd));
        server.spare.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
        if (server.spare) return shed;
    }
    server.accept_paused = true;
    return false;
}

// 5. accept() until EAGAIN: one readable listening socket may mean many waiting clients.
void accept_clients(Server& server) {
    // BEGIN SOLUTION: accept every waiting connection with accept4() until EAGAIN; use
    //   SOCK_NONBLOCK | SOCK_CLOEXEC, retry on EINTR and ECONNABORTED, on EMFILE or ENFILE
    //   call shed_connection(server) (go on while it returns true, else return), report
    //   other errors with lab::warn("accept", ...). For each new client: clear
    //   server.out_of_fds; if server.clients.size() >= server.max_clients, log "refused
    //   PEER: server busy (descriptor FD, N clients)" and refuse() it; else push_back a
    //   pollfd{fd, 0, 0} on server.fds and a Client on server.clients (fds[i + 1] is
    //   clients[i]) and log "PEER connected (N clients)" (PEER from lab::format_address())
    for (;;) {
        lab::Endpoint peer;
        lab::Fd fd(
            accept4(server.listen_fd.get(), peer.addr(), &peer.size, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) {
                if (shed_connection(server)) continue;
                return;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) lab::warn("accept");
            return;
        }
        server.out_of_fds = false;
        const std::string peer_text = lab::format_address(peer);
        if (server.clients.size() >= server.max_clients) {
            server.log("refused ", peer_text, ": server busy (descriptor ", fd.get(), ", ",
                       server.clients.size(), " clients)");
            refuse(std::move(fd));
            continue;
        }
        server.fds.push_back(pollfd{fd.get(), 0, 0});
        server.clients.push_back(Client{std::move(fd), peer_text, {}, false});
        server.log(peer_text, " connected (", server.clients.size(), " clients)");
    }
    // END SOLUTION
}

// Backpressure: read only while there is room for the echo in the output buffer.
bool wants_read(const Client& client, const Server& server) {
    return !client.eof && client.out.size() < server.max_buffer;
}

// 6a. read(): at most one chunk per pass, so one busy client cannot hog the loop.
bool read_some(Client& client, Server& server) {
    const std::size_t room = std::min(server.chunk.size(), server.max_buffer - client.out.size());
    const ssize_t n = read(client.fd.get(), server.chunk.data(), room);
    if (n > 0) {
        client.out.append(server.chunk.data(), static_cast<std::size_t>(n));
        server.log("from ", client.peer, ": ", n, " bytes");
    } else if (n == 0) {
        client.eof = true;  // FIN: nothing more will come, but the echo may still be owed
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        server.log(client.peer, " dropped: ", std::strerror(errno));
        return false;
    }
    return true;
}

// 6b. write(): as much as the socket takes now; the rest waits for the next writable pass.
bool write_some(Client& client, const Server& server) {
    while (!client.out.empty()) {
        const ssize_t n = write(client.fd.get(), client.out.data(), client.out.size());
        if (n == -1 && errno == EINTR) continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        if (n == -1) {
            server.log(client.peer, " dropped: ", std::strerror(errno));
            return false;
        }
        client.out.erase(0, static_cast<std::size_t>(n));
    }
    client.out.shrink_to_fit();  // an idle connection holds no buffer
    return true;
}

// Why poll() said POLLERR or POLLHUP: the socket's pending error, if it has one.
std::string hangup_reason(int fd) {
    int err = 0;
    socklen_t size = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &size) == 0 && err != 0) {
        return std::strerror(err);
    }
    return "hung up";
}

// One client's turn after poll(). Returns false when the connection is finished.
bool serve_client(Client& client, short revents, Server& server) {
    // POLLERR and POLLHUP come even unasked: the connection was reset or is gone.
    if (revents & (POLLERR | POLLHUP)) {
        server.log(client.peer, " dropped: ", hangup_reason(client.fd.get()));
        return false;
    }
    const bool readable = revents & POLLIN;
    const bool writable = revents & POLLOUT;
    if (readable && !read_some(client, server)) return false;
    if ((readable || writable) && !write_some(client, server)) return false;
    if (client.eof && client.out.empty()) {
        server.log(client.peer, " left");
        return false;
    }
    return true;
}

// 7. close(): the Fd closes when the last client is moved over it (or, if it is the
//    last, when it is popped), so the vector keeps no holes.
void remove_client(Server& server, std::size_t i) {
    if (i + 1 != server.clients.size()) {
        server.clients[i] = std::move(server.clients.back());
        server.fds[i + 1] = server.fds.back();  // its revents move too: it is served next
    }
    server.clients.pop_back();
    server.fds.pop_back();
    server.accept_paused = false;  // a descriptor is free again
}

// Sets what each descriptor waits for. poll() answers in revents and leaves events alone,
// so the list lives on between calls. Write interest only while output is pending: an
// idle socket is always writable, and asking would wake the loop for nothing.
void watch(Server& server) {
    // BEGIN SOLUTION: set the events each pollfd waits for; server.fds[0] (the listener)
    //   gets POLLIN unless server.accept_paused (then 0), and server.fds[i + 1] gets
    //   POLLIN if wants_read(clients[i]) plus POLLOUT if clients[i].out is not empty
    server.fds[0].events = server.accept_paused ? 0 : POLLIN;
    for (std::size_t i = 0; i < server.clients.size(); ++i) {
        const Client& client = server.clients[i];
        short events = 0;
        if (wants_read(client, server)) events |= POLLIN;
        if (!client.out.empty()) events |= POLLOUT;
        server.fds[i + 1].events = events;
    }
    // END SOLUTION
}

void serve(Server& server, const sigset_t& wait_mask) {
    while (!lab::stop_requested()) {
        watch(server);
        // BEGIN SOLUTION: wait in ppoll() and serve the ready sockets; call
        //   ppoll(server.fds.data(), server.fds.size(), timeout, &wait_mask) with the timeout
        //   &kAcceptRetry while server.accept_paused, else nullptr; continue on EINTR,
        //   lab::die("ppoll") on other errors, and on 0 (timed out) clear
        //   server.accept_paused. Then serve_client() each client with the revents of
        //   server.fds[i + 1]; when it returns false, remove_client(server, i) and serve the
        //   same index i again. Last, accept_clients() if server.fds[0].revents has POLLIN
        // 4. ppoll(): sleep until a descriptor is ready. wait_mask lets SIGINT and SIGTERM
        //    in only during the wait, so a stop request cannot slip in unseen between the
        //    check above and the call.
        const int ready = ppoll(server.fds.data(), server.fds.size(),
                                server.accept_paused ? &kAcceptRetry : nullptr, &wait_mask);
        if (ready == -1 && errno == EINTR) continue;
        if (ready == -1) lab::die("ppoll");
        if (ready == 0) server.accept_paused = false;  // the pause is over: try again
        for (std::size_t i = 0; i < server.clients.size();) {
            if (serve_client(server.clients[i], server.fds[i + 1].revents, server)) {
                ++i;
            } else {
                remove_client(server, i);  // i now holds the former last client: serve it too
            }
        }
        if (server.fds[0].revents & POLLIN) accept_clients(server);
        // END SOLUTION
    }
}

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    long long max_clients = default_max_clients();
    long long max_buffer = kDefaultMaxBuffer;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--max-clients", &max_clients, 1, kMaxClientsLimit);
    args.option("--max-buffer", &max_buffer, 1, kMaxBufferLimit);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);

    lab::handle_signals();
    // Block SIGINT and SIGTERM outside the wait; ppoll() unblocks them while it waits.
    sigset_t wait_mask;  // nothing blocked: the stop signals may land anywhere
    pthread_sigmask(SIG_SETMASK, nullptr, &wait_mask);

    Server server;
    server.listen_fd = open_listener(local);
    server.fds.push_back(pollfd{server.listen_fd.get(), POLLIN, 0});
    server.spare.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
    server.max_clients = static_cast<std::size_t>(max_clients);
    server.max_buffer = static_cast<std::size_t>(max_buffer);
    server.log = lab::Log(quiet);
    const auto bound = lab::local_endpoint(server.listen_fd.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("tcp", *bound);

    serve(server, wait_mask);

    // 7. close() for everyone: the Fds in server do it as main returns.
    server.log("stopping on ", lab::stop_signal_name(), " with ", server.clients.size(),
               " clients");
    return lab::kExitOk;
}
