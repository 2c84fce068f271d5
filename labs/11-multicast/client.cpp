// 11-multicast client (the receiver): joins a multicast group on one interface and prints
// every datagram sent to the group, one per line; it leaves the group as it exits.
//
// Joining is a socket option, IP_ADD_MEMBERSHIP (IPv6: IPV6_JOIN_GROUP). It tells the
// kernel to take in the group's datagrams on that interface, and the kernel tells the
// network (an IGMP or MLD report) so that switches and routers send them this way.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"
#include "labs/11-multicast/group.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9911;
// Larger than any UDP payload (65507 bytes over IPv4): no datagram is ever cut short.
constexpr std::size_t kBufferSize = 65536;

constexpr const char* kUsage =
    R"(usage: client [--group ADDR] [--port N] [--interface ADDR|NAME] [--count N] [--host ADDR]
       client [HOST [PORT]]
UDP multicast receiver: joins GROUP, prints each datagram sent to GROUP:PORT.
      --group ADDR       multicast group to join (default 239.0.0.10; IPv6: ff02::10 ...)
  -p, --port N           port to bind (default 9911; 0 lets the kernel choose)
      --interface ADDR|NAME  interface to join on: a local IPv4 address or a name
                         (default 127.0.0.1; an IPv6 group needs a name such as eth0)
      --count N          exit 0 after N datagrams (default 0: until stopped)
  -H, --host ADDR        address to bind (default: the group itself)
      --help             this text
)";

// Joins the group on the interface (join == true), or leaves it.
int membership(int fd, const lab::Endpoint& group, const mcast::Interface& interface, bool join) {
    // BEGIN SOLUTION: join (or leave) with setsockopt() and return its result: IPv4
    //   IP_ADD_MEMBERSHIP / IP_DROP_MEMBERSHIP at IPPROTO_IP with an ip_mreqn {the group's
    //   sin_addr, interface.address, interface.index}; IPv6 IPV6_JOIN_GROUP /
    //   IPV6_LEAVE_GROUP at IPPROTO_IPV6 with an ipv6_mreq {sin6_addr, interface.index}
    // STUB: return lab::todo<int>("lab 11: IP_ADD_MEMBERSHIP / IP_DROP_MEMBERSHIP");
    if (group.family() == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(&group.storage);
        const ip_mreqn request{in->sin_addr, interface.address, static_cast<int>(interface.index)};
        return setsockopt(fd, IPPROTO_IP, join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &request,
                          sizeof request);
    }
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&group.storage);
    const ipv6_mreq request{in6->sin6_addr, interface.index};
    return setsockopt(fd, IPPROTO_IPV6, join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP, &request,
                      sizeof request);
    // END SOLUTION
}

// The address to bind: --host if given, else the group itself. A link-local IPv6 group
// (ff02::) names its link by the interface index, as fe80:: addresses do.
lab::Endpoint bind_endpoint(const lab::Args& args, const lab::Endpoint& group,
                            const mcast::Interface& interface) {
    lab::Endpoint local = group;
    if (!args.host().empty()) local = args.endpoint(SOCK_DGRAM);  // --host or HOST
    if (local.family() != group.family()) {
        args.usage_error("bad --host '" + args.host() +
                         "' (want an address of the group's family)");
    }
    if (local.family() == AF_INET6) {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&local.storage);
        if (in6->sin6_scope_id == 0) in6->sin6_scope_id = interface.index;
    }
    return local;
}

}  // namespace

int main(int argc, char** argv) {
    std::string group_name = mcast::kDefaultGroup;
    std::string interface_name = mcast::kDefaultInterface;
    long long count = 0;
    lab::Args args(kUsage);
    args.host_port("", kDefaultPort, lab::Positionals::kHostPort);
    args.option("--group", &group_name);
    args.option("--interface", &interface_name);
    args.option("--count", &count, 0, 1'000'000'000);
    args.parse(argc, argv);
    const lab::Endpoint group = mcast::group_endpoint(args, group_name, args.port());
    const mcast::Interface interface = mcast::parse_interface(args, interface_name, group.family());
    const lab::Endpoint local = bind_endpoint(args, group, interface);
    const std::string group_text = lab::format_address(group);

    lab::handle_signals();
    sigset_t while_waiting;  // nothing blocked: the stop signals may land anywhere
    pthread_sigmask(SIG_SETMASK, nullptr, &while_waiting);

    // BEGIN SOLUTION: create a datagram socket with socket() (group.family(), SOCK_DGRAM),
    //   turn SO_REUSEADDR on with setsockopt(), and bind() it to `local` (the group's address
    //   and port); report failures with lab::die()
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 11: socket(), SO_REUSEADDR, bind()");
    // 1. socket(), and SO_REUSEADDR so that several receivers on this host share the port.
    const lab::Fd sock(socket(group.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    const int on = 1;
    if (setsockopt(sock.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEADDR");
    }

    // 2. bind() the group's address and port: the socket then takes only datagrams sent
    //    to this group, not unicast to the port, nor other groups sent to the same port.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    // END SOLUTION

    // 3. Join the group on the interface (the source notes' step 2b).
    if (membership(sock.get(), group, interface, true) == -1) {
        lab::die("join", group_text + " on " + interface_name);
    }
    // Linux delivers a group's datagrams to every socket bound to the port whose host has
    // joined it, by any socket; IP_MULTICAST_ALL 0 limits this one to its own joins.
    const int off = 0;
    const bool v4 = group.family() == AF_INET;
    if (setsockopt(sock.get(), v4 ? IPPROTO_IP : IPPROTO_IPV6,
                   v4 ? IP_MULTICAST_ALL : IPV6_MULTICAST_ALL, &off, sizeof off) == -1) {
        lab::die("setsockopt MULTICAST_ALL");
    }
    const auto bound = lab::local_endpoint(sock.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("udp", *bound);

    // 4. recvfrom(): wait in ppoll(), take one datagram, print exactly its bytes.
    std::vector<char> buffer(kBufferSize);
    for (long long received = 0; count == 0 || received < count;) {
        pollfd readable{sock.get(), POLLIN, 0};
        if (ppoll(&readable, 1, nullptr, &while_waiting) == -1) {
            if (errno == EINTR && lab::stop_requested()) break;
            if (errno == EINTR) continue;
            lab::die("ppoll", lab::format_address(*bound));
        }
        const ssize_t n = recvfrom(sock.get(), buffer.data(), buffer.size(), 0, nullptr, nullptr);
        if (n == -1) lab::die("recvfrom", lab::format_address(*bound));
        lab::print_payload({buffer.data(), static_cast<std::size_t>(n)});
        ++received;
    }

    // 5. Leave the group (IP_DROP_MEMBERSHIP), then close(). close() alone would leave it
    //    too; saying so is clearer, and a long-lived program may leave and stay open.
    if (membership(sock.get(), group, interface, false) == -1) {
        lab::warn("leave", group_text + " on " + interface_name);
    }
    return lab::kExitOk;
}
