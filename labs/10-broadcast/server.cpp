// 10-broadcast server (the sender): sends "broadcast 1", "broadcast 2", ... to a broadcast
// address, once every --interval milliseconds, until stopped or --count datagrams are out.
//
// A broadcast datagram is addressed to every host of a subnet at once. The kernel refuses
// to send one unless the socket has said it means to (SO_BROADCAST): one typo in an
// address should not wake every machine on the network.
//
// The default destination, 127.255.255.255, is the broadcast address of the loopback
// subnet 127.0.0.0/8, so nothing leaves this machine unless you name a LAN's address.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <ctime>
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
constexpr long long kMaxIntervalMs = 3'600'000;  // one hour

constexpr const char* kUsage =
    R"(usage: server [--to ADDR] [--port N] [--count N] [--interval MS] [--host ADDR]
              [--no-broadcast-flag] [--quiet]
       server [PORT]
UDP broadcast sender: sends "broadcast 1", "broadcast 2", ... to ADDR:PORT.
      --to ADDR          destination, an IPv4 broadcast address (default 127.255.255.255,
                         which stays on this machine; a LAN's is like 192.168.1.255)
  -p, --port N           destination port (default 9910)
      --count N          datagrams to send, then exit 0 (default 0: until stopped)
      --interval MS      milliseconds between datagrams (default 1000)
  -H, --host ADDR        local IPv4 address to send from (default 0.0.0.0: the route decides)
      --no-broadcast-flag  leave SO_BROADCAST off, to watch sendto() fail
      --quiet            no log line per datagram
      --help             this text
)";

// Resolves an IPv4 address given on the command line; anything else is a usage error.
lab::Endpoint ipv4_endpoint(const lab::Args& args, const std::string& host, std::uint16_t port,
                            const char* option) {
    const lab::Resolution found = lab::resolve(host, port, SOCK_DGRAM);
    for (const lab::Endpoint& endpoint : found.endpoints) {
        if (endpoint.family() == AF_INET) return endpoint;
    }
    args.usage_error(std::string("bad ") + option + " '" + host +
                     "' (want an IPv4 address: IPv6 has no broadcast, it has multicast)");
}

// Blocks SIGINT and SIGTERM except while ppoll() waits, so a stop request can never slip
// in between checking the flag and starting to wait. Returns the mask ppoll() should use.
// Sleeps `ms` milliseconds; returns false if a stop signal arrived meanwhile.
bool pause_unless_stopped(long long ms, const sigset_t& while_waiting) {
    const timespec interval{static_cast<std::time_t>(ms / 1000),
                            static_cast<long>(ms % 1000) * 1'000'000L};
    ppoll(nullptr, 0, &interval, &while_waiting);  // EINTR here means a stop signal
    return !lab::stop_requested();
}

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
    args.option("--count", &count, 0, 1'000'000'000);
    args.option("--interval", &interval_ms, 0, kMaxIntervalMs);
    args.flag("--no-broadcast-flag", &broadcast_flag, false);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint destination = ipv4_endpoint(args, to, args.port(), "--to");
    const lab::Endpoint local = ipv4_endpoint(args, args.host(), 0, "--host");
    const std::string to_text = lab::format_address(destination);
    const lab::Log log(quiet);

    lab::handle_signals();
    sigset_t while_waiting;  // nothing blocked: the stop signals may land anywhere
    pthread_sigmask(SIG_SETMASK, nullptr, &while_waiting);

    // BEGIN SOLUTION: create an IPv4 datagram socket with socket() (AF_INET, SOCK_DGRAM),
    //   turn SO_BROADCAST on (`broadcast_flag ? 1 : 0`) with setsockopt() at SOL_SOCKET,
    //   and bind() it to `local`; report failures with lab::die("socket",
    //   "setsockopt SO_BROADCAST", "bind", ...)
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 10: socket(), SO_BROADCAST, bind()");
    // 1. socket(): broadcast is an IPv4 datagram feature; TCP cannot talk to many at once.
    const lab::Fd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. setsockopt(SO_BROADCAST): permission to send to a broadcast address. Without it
    //    sendto() fails with EACCES ("Permission denied").
    const int on = broadcast_flag ? 1 : 0;
    if (setsockopt(sock.get(), SOL_SOCKET, SO_BROADCAST, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_BROADCAST");
    }

    // (optional) bind(): choose the source address; port 0, since nobody replies to us.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    // END SOLUTION

    // 3. sendto() the broadcast address, which the receivers never bind: they bind the
    //    port on 0.0.0.0, and the kernel hands each of them a copy.
    for (long long n = 1; (count == 0 || n <= count) && !lab::stop_requested(); ++n) {
        if (n > 1 && !pause_unless_stopped(interval_ms, while_waiting)) break;
        const std::string message = "broadcast " + std::to_string(n);
        // BEGIN SOLUTION: send `message` with sendto() to `destination`, the broadcast address;
        //   on failure lab::die("sendto", to_text)
        if (sendto(sock.get(), message.data(), message.size(), 0, destination.addr(),
                   destination.size) == -1) {
            lab::die("sendto", to_text);
        }
        // END SOLUTION
        log("sent '", message, "' (", message.size(), " bytes) to ", to_text);
    }

    // 4. close(): the Fd does it as main returns.
    if (lab::stop_requested()) log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}
