// 11-multicast server (the sender): sends "multicast 1", "multicast 2", ... to a multicast
// group, one datagram every --interval milliseconds, until --count are out or a stop
// signal comes. As in lab 10, the server sends and the clients receive.
//
// A multicast datagram goes to a group address; only hosts where some socket has joined
// the group take it in. The sender needs no membership: it chooses the interface the
// datagrams leave by (IP_MULTICAST_IF), how many routers they may cross (the TTL), and
// whether this host's own members get a copy (IP_MULTICAST_LOOP). The defaults, group
// 239.0.0.10 on interface 127.0.0.1 with TTL 1, keep every datagram on this machine.
#include <netinet/in.h>
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
#include "labs/11-multicast/group.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9911;
constexpr long long kDefaultTtl = 1;  // this subnet only: no router forwards it
constexpr long long kDefaultIntervalMs = 1000;
constexpr long long kIntervalMsLimit = 3'600'000;  // one hour
constexpr long long kCountLimit = 1'000'000'000;

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
      --interval MS      milliseconds between datagrams, 0 to 3600000 (default 1000)
  -H, --host ADDR        local address to send from (default 0.0.0.0 or ::)
      --quiet            no log line per datagram
      --help             this text
)";

void set_multicast_options(int fd, int family, const mcast::Interface& interface, int ttl,
                           int loop);
lab::Endpoint source_endpoint(const lab::Args& args, int family);

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
    args.option("--count", &count, 0, kCountLimit);
    args.option("--interval", &interval_ms, 0, kIntervalMsLimit);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint group = mcast::group_endpoint(args, group_name, args.port());
    const mcast::Interface interface = mcast::parse_interface(args, interface_name, group.family());
    const lab::Endpoint local = source_endpoint(args, group.family());
    const std::string group_text = lab::format_address(group);
    const lab::Log log(quiet);
    lab::handle_signals();

    // 1. socket(): multicast, like broadcast, is a datagram feature.
    const lab::Fd sock(socket(group.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. The interface the datagrams leave by, their TTL, and the copy for this host.
    set_multicast_options(sock.get(), group.family(), interface, static_cast<int>(ttl),
                          loop ? 1 : 0);

    // 3. bind(): the source address the members will see; port 0, since no one replies.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }

    // 4. sendto() the group, once per interval: one datagram, a copy for every member.
    for (long long n = 1; count == 0 || n <= count; ++n) {
        if (n > 1) lab::sleep_unless_stopped(static_cast<double>(interval_ms) / 1000);
        if (lab::stop_requested()) break;
        const std::string message = "multicast " + std::to_string(n);
        if (sendto(sock.get(), message.data(), message.size(), 0, group.addr(), group.size) == -1) {
            lab::die("sendto", group_text);
        }
        log("sent '", message, "' (", message.size(), " bytes) to ", group_text);
    }

    // 5. close(): the Fd closes the socket as main returns.
    if (lab::stop_requested()) log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}

namespace {

void set_option(int fd, int level, int name, const void* value, socklen_t size, const char* what) {
    if (setsockopt(fd, level, name, value, size) == -1) lab::die(what);
}

// The three sender options, in their IPv4 and IPv6 spellings, each set or fatal (the
// failing option's name in the message, as "setsockopt IP_MULTICAST_IF"):
// - IP_MULTICAST_IF: the interface, as the local address or the index of an ip_mreqn
//   (IPv6: IPV6_MULTICAST_IF, an int index). It wants one of this host's interfaces,
//   never the group: the source notes' mistake, refused with EADDRNOTAVAIL.
// - IP_MULTICAST_TTL (IPv6: IPV6_MULTICAST_HOPS): how many routers it may cross.
// - IP_MULTICAST_LOOP (IPv6: IPV6_MULTICAST_LOOP): a copy for members on this host.
void set_multicast_options(int fd, int family, const mcast::Interface& interface, int ttl,
                           int loop) {
    // TASK 11.sender-options
    if (family == AF_INET) {
        const ip_mreqn via{{}, interface.address, static_cast<int>(interface.index)};
        set_option(fd, IPPROTO_IP, IP_MULTICAST_IF, &via, sizeof via, "setsockopt IP_MULTICAST_IF");
        set_option(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl,
                   "setsockopt IP_MULTICAST_TTL");
        set_option(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop,
                   "setsockopt IP_MULTICAST_LOOP");
        return;
    }
    const int index = static_cast<int>(interface.index);
    set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &index, sizeof index,
               "setsockopt IPV6_MULTICAST_IF");
    set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &ttl, sizeof ttl,
               "setsockopt IPV6_MULTICAST_HOPS");
    set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, &loop, sizeof loop,
               "setsockopt IPV6_MULTICAST_LOOP");
    // END TASK
}

// --host, or any local address (0.0.0.0 or ::) of the group's family: a usage error
// otherwise, since an IPv4 group cannot be sent from an IPv6 address.
lab::Endpoint source_endpoint(const lab::Args& args, int family) {
    const std::string host = args.given("--host") ? args.host()
                             : family == AF_INET  ? "0.0.0.0"
                                                  : "::";
    const lab::Resolution found = lab::resolve(host, 0, SOCK_DGRAM);
    if (found.endpoints.empty() || found.endpoints.front().family() != family) {
        args.usage_error("bad --host '" + host + "' (want a local address of the group's family)");
    }
    return found.endpoints.front();
}

}  // namespace
