// impair: a datagram impairment relay. It sits between UDP clients and a UDP server and does
// to their datagrams what a poor network does: loses some (--loss), sends some twice
// (--dup), delays them (--delay) and lets some overtake the others (--reorder), both ways.
// Each datagram's fate is drawn from a generator seeded by --seed: the same seed and the
// same datagrams in the same order give the same run.
//
// Each client gets a socket of its own, connect()ed to the server, so the server sees one
// address per client and every reply goes back to the client it is for. Where the kernel
// has netem, `tc qdisc add dev lo root netem loss 30%` does the same to a whole interface.
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

constexpr std::uint16_t kDefaultPort = 9801;
constexpr std::size_t kBufferSize = 65536;                             // any UDP payload
constexpr long long kDefaultMaxClients = 64, kMaxClientsLimit = 1000;  // a socket each
constexpr long long kMaxDelayMs = 10000;
constexpr std::size_t kMaxQueued = 4096;  // datagrams waiting for their time

constexpr const char* kUsage =
    R"(usage: impair --to HOST:PORT [--host ADDR] [--port N] [--loss P] [--dup P]
              [--reorder P] [--delay MS] [--seed N] [--max-clients N] [--quiet]
Datagram impairment relay: passes UDP datagrams between its clients and the server at
--to, and loses, duplicates, reorders and delays them as asked, in both directions.
  -H, --host ADDR      loopback address to listen on (default 127.0.0.1; or ::1)
  -p, --port N         port the clients send to (default 9801; 0 lets the kernel choose)
      --to HOST:PORT   the server: 127.0.0.1:9901, [::1]:9901
      --loss P         percent of datagrams lost, 0 to 100 (default 0)
      --dup P          percent sent twice (default 0)
      --delay MS       milliseconds each datagram waits, 0 to 10000 (default 0)
      --reorder P      percent sent at once, ahead of those waiting (needs --delay)
      --seed N         seed of the decisions (default 1): same seed, same fates
      --max-clients N  clients at once, 1 to 1000 (default 64)
      --quiet          no log line per datagram
      --help           this text
A client past --max-clients takes the place of the one silent longest.
Stops on SIGINT or SIGTERM.
)";

// A client, and the socket through which its datagrams reach the server.
struct Client {
    lab::Endpoint address;
    std::string name;  // its address, printed
    lab::Fd upstream;
    Clock::time_point last_heard;
};

// A datagram on its way out: sendto(fd, to) to a client, send(fd) on an upstream socket.
struct Datagram {
    std::string path;  // "127.0.0.1:51454 -> server", for the log
    std::string bytes;
    int fd;
    std::optional<lab::Endpoint> to;
    Clock::time_point due{};
    long long number = 0;
};

// Everything the relay knows. The generator's sequence for a seed is fixed by the standard:
// a run repeats on any machine (seeded from --seed, predictable on purpose).
struct Relay {  // NOLINT(cert-msc32-c,cert-msc51-cpp)
    long long loss = 0, dup = 0, reorder = 0, delay_ms = 0, seed = 1,
              max_clients = kDefaultMaxClients;
    lab::Endpoint server;
    std::mt19937 rng;
    long long count = 0;
    std::vector<Client> clients;
    std::deque<Datagram> queue;  // in order of due time
};

Client* client_for(Relay& relay, const lab::Endpoint& from, const lab::Log& log);
void impair(Relay& relay, Datagram datagram, const lab::Log& log);
void send_due(Relay& relay, const lab::Log& log);
std::optional<lab::Endpoint> parse_target(std::string text);

}  // namespace

int main(int argc, char** argv) {
    Relay relay;
    std::string to_text;
    bool quiet = false;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kNone);
    args.option("--to", &to_text);
    args.option("--loss", &relay.loss, 0, 100);
    args.option("--dup", &relay.dup, 0, 100);
    args.option("--reorder", &relay.reorder, 0, 100);
    args.option("--delay", &relay.delay_ms, 0, kMaxDelayMs);
    args.option("--seed", &relay.seed, 0, 4294967295);
    args.option("--max-clients", &relay.max_clients, 1, kMaxClientsLimit);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    if (!args.given("--to")) args.usage_error("--to HOST:PORT is required");
    const auto server = parse_target(to_text);
    if (!server) args.usage_error("bad --to '" + to_text + "': want HOST:PORT, port 1 to 65535");
    if (relay.reorder > 0 && relay.delay_ms == 0) args.usage_error("--reorder needs a --delay");
    const lab::Endpoint local = args.endpoint(SOCK_DGRAM);
    // It forwards whatever anyone sends it: on a network it would be an open relay.
    const std::string local_text = lab::format_address(local);
    if (!local_text.starts_with("127.") && !local_text.starts_with("[::1]:")) {
        args.usage_error("--host must be a loopback address (127.0.0.1, ::1)");
    }
    relay.server = *server;
    relay.rng.seed(static_cast<std::mt19937::result_type>(relay.seed));
    const lab::Log log(quiet);
    lab::handle_signals();  // a stop signal interrupts poll() with EINTR

    const lab::Fd sock(socket(local.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    const auto bound = lab::local_endpoint(sock.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("udp", *bound);
    log("relaying to ", lab::format_address(*server), ": loss ", relay.loss, "%, dup ", relay.dup,
        "%, reorder ", relay.reorder, "%, delay ", relay.delay_ms, " ms, seed ", relay.seed);

    // One poll() for the clients' socket, every upstream socket and the next due time.
    std::vector<char> buffer(kBufferSize);
    const auto bytes = [&buffer](ssize_t n) { return std::string(buffer.data(), std::size_t(n)); };
    while (!lab::stop_requested()) {
        std::vector<pollfd> fds{{sock.get(), POLLIN, 0}};
        for (const Client& c : relay.clients)
            fds.push_back({c.upstream.get(), POLLIN, 0});
        auto next = Clock::now() + Ms(60'000);  // sleep until the next datagram must go
        if (!relay.queue.empty()) next = std::min(next, relay.queue.front().due);
        const auto wait =
            std::max<long long>(0, std::chrono::ceil<Ms>(next - Clock::now()).count());
        if (poll(fds.data(), fds.size(), int(wait)) == -1 && errno != EINTR) lab::die("poll");
        for (std::size_t i = 1; i < fds.size(); ++i) {  // replies, each for one client
            const Client& c = relay.clients[i - 1];
            if (fds[i].revents == 0) continue;
            const ssize_t n = recv(c.upstream.get(), buffer.data(), buffer.size(), MSG_DONTWAIT);
            if (n >= 0) {
                impair(relay, {"server -> " + c.name, bytes(n), sock.get(), c.address}, log);
            } else if (errno == ECONNREFUSED) {  // an ICMP "port unreachable" came back
                log("server for ", c.name, ": ", std::strerror(errno));
            }
        }
        if ((fds[0].revents & POLLIN) != 0) {  // a client's datagram (a new client goes last)
            lab::Endpoint from;
            const ssize_t n = recvfrom(sock.get(), buffer.data(), buffer.size(), MSG_DONTWAIT,
                                       from.addr(), &from.size);
            const Client* c = n == -1 ? nullptr : client_for(relay, from, log);
            if (c) impair(relay, {c->name + " -> server", bytes(n), c->upstream.get(), {}}, log);
        }
        send_due(relay, log);
    }
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}

namespace {

// The client at `from`, made on its first datagram with a socket of its own to the
// server. When --max-clients are known, the one heard from longest ago makes room.
Client* client_for(Relay& relay, const lab::Endpoint& from, const lab::Log& log) {
    const auto now = Clock::now();
    const auto known = std::ranges::find(relay.clients, from, &Client::address);
    if (known != relay.clients.end()) {
        known->last_heard = now;
        return &*known;
    }
    if (std::cmp_greater_equal(relay.clients.size(), relay.max_clients)) {
        const auto quiet = std::ranges::min_element(relay.clients, {}, &Client::last_heard);
        const int fd = quiet->upstream.get();
        log("client ", quiet->name, " dropped: room for a new one");
        std::erase_if(relay.queue, [fd](const Datagram& d) { return d.fd == fd; });
        relay.clients.erase(quiet);
    }
    const std::string name = lab::format_address(from);
    lab::Fd up(socket(relay.server.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!up || connect(up.get(), relay.server.addr(), relay.server.size) == -1) {
        log("client ", name, " dropped: socket to the server: ", std::strerror(errno));
        return nullptr;
    }
    const auto mine = lab::local_endpoint(up.get());
    log("client ", name, " connected: to the server from ",
        mine ? lab::format_address(*mine) : "?");
    return &relay.clients.emplace_back(Client{from, name, std::move(up), now});
}

// Draws the datagram's fate: three numbers for each, so that the n-th datagram's fate
// depends only on the seed and n. As with netem, a reordered datagram skips the delay.
void impair(Relay& relay, Datagram datagram, const lab::Log& log) {
    datagram.number = ++relay.count;
    const bool lost = relay.rng() % 100 < std::uint64_t(relay.loss);
    const bool twice = relay.rng() % 100 < std::uint64_t(relay.dup);
    const bool ahead = relay.rng() % 100 < std::uint64_t(relay.reorder);
    datagram.due = Clock::now() + Ms(ahead ? 0 : relay.delay_ms);
    const std::string what = "#" + std::to_string(datagram.number) + " " + datagram.path + ": " +
                             std::to_string(datagram.bytes.size()) + " bytes: ";
    if (lost || relay.queue.size() + 2 > kMaxQueued) {
        log(what, lost ? "lost" : "dropped: too many datagrams waiting");
        return;
    }
    const std::size_t waiting = relay.queue.size();
    log(what, twice ? "sent twice" : "forwarded", !ahead ? "" : " at once",
        ahead && waiting > 0 ? ", ahead of " + std::to_string(waiting) : "");
    relay.queue.insert(ahead ? relay.queue.begin() : relay.queue.end(), twice ? 2 : 1, datagram);
}

// Sends every datagram whose time has come.
void send_due(Relay& relay, const lab::Log& log) {
    const auto now = Clock::now();
    for (; !relay.queue.empty() && relay.queue.front().due <= now; relay.queue.pop_front()) {
        const Datagram& d = relay.queue.front();
        const ssize_t sent =
            d.to ? sendto(d.fd, d.bytes.data(), d.bytes.size(), 0, d.to->addr(), d.to->size)
                 : send(d.fd, d.bytes.data(), d.bytes.size(), 0);
        if (sent == -1) log("#", d.number, " ", d.path, ": ", std::strerror(errno));
    }
}

// "127.0.0.1:9901" or "[::1]:9901": an address literal or a name, then a port, not 0.
std::optional<lab::Endpoint> parse_target(std::string text) {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    const auto port = lab::parse_port(std::string_view(text).substr(colon + 1));
    text.resize(colon);
    if (text.starts_with('[') && text.ends_with(']')) text = text.substr(1, text.size() - 2);
    const lab::Resolution found = lab::resolve(text, port.value_or(0), SOCK_DGRAM);
    if (!port || *port == 0 || found.endpoints.empty()) return std::nullopt;
    return found.endpoints.front();
}

}  // namespace
