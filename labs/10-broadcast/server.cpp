// 10-broadcast server (the sender): sends "broadcast 1", "broadcast 2", ... to a broadcast
// address, one datagram every --interval milliseconds, until --count are out or a stop
// signal comes. In this lab the server sends and the clients receive, as in the notes.
//
// A broadcast datagram is addressed to every host of a subnet at once. The kernel refuses
// to send one unless the socket has said it means to (SO_BROADCAST): one typo in an
// address should not wake every machine on the network. The default destination,
// 127.255.255.255, is the broadcast address of the loopback subnet 127.0.0.0/8, so
// nothing leaves this machine unless you name a LAN's broadcast address.
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9910;
constexpr const char* kDefaultTo = "127.255.255.255";
constexpr long long kDefaultIntervalMs = 1000;
constexpr long long kIntervalMsLimit = 3'600'000;  // one hour
constexpr long long kCountLimit = 1'000'000'000;

constexpr const char* kUsage =
    R"(usage: server [--to ADDR] [--port N] [--count N] [--interval MS] [--host ADDR]
              [--no-broadcast-flag] [--quiet]
       server [PORT]
UDP broadcast sender: sends "broadcast 1", "broadcast 2", ... to ADDR:PORT.
      --to ADDR          destination, an IPv4 broadcast address (default 127.255.255.255,
                         which stays on this machine; a LAN's is like 192.168.1.255)
  -p, --port N           destination port (default 9910)
      --count N          datagrams to send, then exit 0 (default 0: until stopped)
      --interval MS      milliseconds between datagrams, 0 to 3600000 (default 1000)
  -H, --host ADDR        local IPv4 address to send from (default 0.0.0.0: the route decides)
      --no-broadcast-flag  leave SO_BROADCAST off, to watch sendto() fail
      --quiet            no log line per datagram
      --help             this text
)";

lab::Endpoint ipv4_endpoint(const lab::Args& args, const std::string& host, std::uint16_t port,
                            const char* option);

}  // namespace

int main(int argc, char** argv) {
    std::string to = kDefaultTo;
    long long count = 0;
    long long interval_ms = kDefaultIntervalMs;
    bool broadcast_flag = true;
    bool quiet = false;
    lab::Args args(kUsage);
    args.host_port("0.0.0.0", kDefaultPort, lab::Positionals::kPort);
    args.option("--to", &to);
    args.option("--count", &count, 0, kCountLimit);
    args.option("--interval", &interval_ms, 0, kIntervalMsLimit);
    args.flag("--no-broadcast-flag", &broadcast_flag, false);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint destination = ipv4_endpoint(args, to, args.port(), "--to");
    const lab::Endpoint local = ipv4_endpoint(args, args.host(), 0, "--host");
    const std::string to_text = lab::format_address(destination);
    const lab::Log log(quiet);
    lab::handle_signals();

    // 1. socket(): an IPv4 datagram socket. A broadcast is one datagram for every host of
    //    a link; TCP, a connection between exactly two ends, has nothing like it.
    const lab::Fd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. setsockopt(SO_BROADCAST): the permission to send to a broadcast address. Without
    //    it sendto() fails with EACCES, "Permission denied" (--no-broadcast-flag).
    // TASK 10.so-broadcast
    const int on = broadcast_flag ? 1 : 0;
    if (setsockopt(sock.get(), SOL_SOCKET, SO_BROADCAST, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_BROADCAST");
    }
    // END TASK

    // 3. bind(): the source address the receivers will see; port 0, since no one replies.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }

    // 4. sendto() the broadcast address, once per interval. No receiver binds that
    //    address: each binds the port on 0.0.0.0, and its kernel hands it a copy.
    for (long long n = 1; count == 0 || n <= count; ++n) {
        if (n > 1) lab::sleep_unless_stopped(static_cast<double>(interval_ms) / 1000);
        if (lab::stop_requested()) break;
        const std::string message = "broadcast " + std::to_string(n);
        // TASK 10.sendto
        if (sendto(sock.get(), message.data(), message.size(), 0, destination.addr(),
                   destination.size) == -1) {
            lab::die("sendto", to_text);
        }
        // END TASK
        log("sent '", message, "' (", message.size(), " bytes) to ", to_text);
    }

    // 5. close(): the Fd closes the socket as main returns.
    if (lab::stop_requested()) log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}

namespace {

// An address given on the command line, which must be IPv4: anything else is a usage
// error (exit 2). Broadcast is an IPv4 feature; IPv6 has multicast groups instead.
lab::Endpoint ipv4_endpoint(const lab::Args& args, const std::string& host, std::uint16_t port,
                            const char* option) {
    const lab::Resolution found = lab::resolve(host, port, SOCK_DGRAM);
    for (const lab::Endpoint& endpoint : found.endpoints) {
        if (endpoint.family() == AF_INET) return endpoint;
    }
    args.usage_error(std::string("bad ") + option + " '" + host +
                     "' (want an IPv4 address: IPv6 has no broadcast, it has multicast)");
}

}  // namespace
