// 11-multicast server (the sender): sends "multicast 1", "multicast 2", ... to a multicast
// group, once every --interval milliseconds, until stopped or --count datagrams are out.
//
// A multicast datagram goes to a group address; only hosts where some socket has joined
// the group take it in. The sender needs no membership: it chooses the interface the
// datagrams leave by (IP_MULTICAST_IF), how many routers they may cross (the TTL), and
// whether this host's own members get a copy (IP_MULTICAST_LOOP).
//
// The defaults, group 239.0.0.10 on interface 127.0.0.1 with TTL 1, keep every datagram
// on this machine.
#include <netinet/in.h>
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
#include "labs/11-multicast/group.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9911;
constexpr long long kDefaultTtl = 1;  // this subnet only: no router forwards it
constexpr long long kDefaultIntervalMs = 1000;
constexpr long long kMaxIntervalMs = 3'600'000;  // one hour

constexpr const char* kUsage =
    R"(usage: server [--group ADDR] [--port N] [--interface ADDR|NAME] [--ttl N]
              [--loop | --no-loop] [--count N] [--interval MS] [--host ADDR] [--quiet]
       server [PORT]
UDP multicast sender: sends "multicast 1", "multicast 2", ... to GROUP:PORT.
      --group ADDR       multicast group (default 239.0.0.10; IPv6: ff02::10, ff05::10 ...)
  -p, --port N           destination port (default 9911)
      --interface ADDR|NAME  interface to send on: a local IPv4 address or a name
                         (default 127.0.0.1; an IPv6 group needs a name such as eth0)
      --ttl N            IPv4 TTL / IPv6 hop limit, 0 to 255 (default 1: this subnet)
      --loop, --no-loop  whether members on this host get a copy (default --loop)
      --count N          datagrams to send, then exit 0 (default 0: until stopped)
      --interval MS      milliseconds between datagrams (default 1000)
  -H, --host ADDR        local address to send from (default 0.0.0.0 or ::)
      --quiet            no log line per datagram
      --help             this text
)";

bool pause_unless_stopped(long long ms, const sigset_t& while_waiting) {
    const timespec interval{static_cast<std::time_t>(ms / 1000),
                            static_cast<long>(ms % 1000) * 1'000'000L};
    ppoll(nullptr, 0, &interval, &while_waiting);  // EINTR here means a stop signal
    return !lab::stop_requested();
}

void set_option(int fd, int level, int name, const void* value, socklen_t size, const char* what) {
    if (setsockopt(fd, level, name, value, size) == -1) lab::die(what);
}

// 2. The three multicast sender options, in their IPv4 and IPv6 spellings.
void set_multicast_options(int fd, int family, const mcast::Interface& interface, int ttl,
                           int loop) {
    // BEGIN SOLUTION: set the three sender options with set_option() (setsockopt() or die):
    //   IPv4, at IPPROTO_IP: IP_MULTICAST_IF (an ip_mreqn with no group, interface.address
    //   and interface.index), IP_MULTICAST_TTL (ttl) and IP_MULTICAST_LOOP (loop); IPv6, at
    //   IPPROTO_IPV6: IPV6_MULTICAST_IF (interface.index as an int), IPV6_MULTICAST_HOPS
    //   (ttl) and IPV6_MULTICAST_LOOP (loop)
    // STUB: lab::todo("lab 11: set_multicast_options(): IP_MULTICAST_IF, TTL, LOOP");
    if (family == AF_INET) {
        // IP_MULTICAST_IF wants a local interface (address or index), not the group.
        const ip_mreqn via{{}, interface.address, static_cast<int>(interface.index)};
        set_option(fd, IPPROTO_IP, IP_MULTICAST_IF, &via, sizeof via, "setsockopt IP_MULTICAST_IF");
        set_option(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl,
                   "setsockopt IP_MULTICAST_TTL");
        set_option(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop,
                   "setsockopt IP_MULTICAST_LOOP");
    } else {
        const int index = static_cast<int>(interface.index);
        set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &index, sizeof index,
                   "setsockopt IPV6_MULTICAST_IF");
        set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &ttl, sizeof ttl,
                   "setsockopt IPV6_MULTICAST_HOPS");
        set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, &loop, sizeof loop,
                   "setsockopt IPV6_MULTICAST_LOOP");
    }
    // END SOLUTION
}

}  // namespace

int main(int argc, char** argv) {
    std::string group_name = mcast::kDefaultGroup;
    std::string interface_name = mcast::kDefaultInterface;
    long long ttl = kDefaultTtl;
    bool loop = true;
    long long count = 0;
    long long interval_ms = kDefaultIntervalMs;
    bool quiet = false;
    lab::Args args(kUsage);
    args.host_port("", kDefaultPort, lab::Positionals::kPort);
    args.option("--group", &group_name);
    args.option("--interface", &interface_name);
    args.option("--ttl", &ttl, 0, 255);
    args.flag("--loop", &loop, true);
    args.flag("--no-loop", &loop, false);
    args.option("--count", &count, 0, 1'000'000'000);
    args.option("--interval", &interval_ms, 0, kMaxIntervalMs);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint group = mcast::group_endpoint(args, group_name, args.port());
    const mcast::Interface interface = mcast::parse_interface(args, interface_name, group.family());
    std::string host = group.family() == AF_INET ? "0.0.0.0" : "::";  // any local address
    if (args.given("--host")) host = args.host();
    const lab::Resolution local = lab::resolve(host, 0, SOCK_DGRAM);
    if (local.endpoints.empty() || local.endpoints.front().family() != group.family()) {
        args.usage_error("bad --host '" + host + "' (want a local address of the group's family)");
    }
    const std::string group_text = lab::format_address(group);
    const lab::Log log(quiet);

    lab::handle_signals();
    sigset_t while_waiting;  // nothing blocked: the stop signals may land anywhere
    pthread_sigmask(SIG_SETMASK, nullptr, &while_waiting);

    // BEGIN SOLUTION: create a datagram socket with socket() (group.family(), SOCK_DGRAM);
    //   on failure lab::die("socket")
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 11: socket()");
    // 1. socket(): multicast, like broadcast, is a datagram feature.
    const lab::Fd sock(socket(group.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    // END SOLUTION

    // 2. The outgoing interface, the TTL and the loopback copy (see above).
    set_multicast_options(sock.get(), group.family(), interface, static_cast<int>(ttl),
                          loop ? 1 : 0);

    // (optional) bind(): the source address; port 0, since nobody replies to us.
    if (bind(sock.get(), local.endpoints.front().addr(), local.endpoints.front().size) == -1) {
        lab::die("bind", lab::format_address(local.endpoints.front()));
    }

    // 3. sendto() the group: one datagram, a copy for every member on the link.
    for (long long n = 1; (count == 0 || n <= count) && !lab::stop_requested(); ++n) {
        if (n > 1 && !pause_unless_stopped(interval_ms, while_waiting)) break;
        const std::string message = "multicast " + std::to_string(n);
        if (sendto(sock.get(), message.data(), message.size(), 0, group.addr(), group.size) == -1) {
            lab::die("sendto", group_text);
        }
        log("sent '", message, "' (", message.size(), " bytes) to ", group_text);
    }

    // 4. close(): the Fd does it as main returns.
    if (lab::stop_requested()) log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}
