// 11-multicast client (the receiver): joins a multicast group on one interface, prints
// every datagram sent to the group exactly as it came, one per line, and leaves the group
// as it exits. It sends nothing and expects no reply, so it has no --timeout: it waits
// until --count datagrams or a stop signal.
//
// Joining is a socket option, IP_ADD_MEMBERSHIP (IPv6: IPV6_JOIN_GROUP). It tells the
// kernel to take in the group's datagrams on that interface, and the kernel tells the
// network (an IGMP or MLD report) so that switches and routers send them this way.
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
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
constexpr long long kCountLimit = 1'000'000'000;
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

lab::Endpoint bind_endpoint(const lab::Args& args, const lab::Endpoint& group,
                            const mcast::Interface& interface);
int membership(int fd, const lab::Endpoint& group, const mcast::Interface& interface, bool join);
void print_datagrams(int fd, long long count, const std::string& where);

}  // namespace

int main(int argc, char** argv) {
    std::string group_name = mcast::kDefaultGroup;
    std::string interface_name = mcast::kDefaultInterface;
    long long count = 0;
    lab::Args args(kUsage);
    args.host_port("", kDefaultPort, lab::Positionals::kHostPort);
    args.option("--group", &group_name);
    args.option("--interface", &interface_name);
    args.option("--count", &count, 0, kCountLimit);
    args.parse(argc, argv);
    const lab::Endpoint group = mcast::group_endpoint(args, group_name, args.port());
    const mcast::Interface interface = mcast::parse_interface(args, interface_name, group.family());
    const lab::Endpoint local = bind_endpoint(args, group, interface);
    const std::string joined = lab::format_address(group) + " on " + interface_name;
    lab::handle_signals();

    // 1. socket(): a datagram socket of the group's family.
    const lab::Fd sock(socket(group.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. setsockopt(SO_REUSEADDR), before bind(): several members on this host share the
    //    port, and each gets its own copy of every datagram.
    const int on = 1;
    if (setsockopt(sock.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEADDR");
    }

    // 3. bind() the group's address and port: the socket then takes only datagrams sent
    //    to this group, not unicast to the port, nor other groups sent to the same port.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }

    // 4. Join the group on the interface: the kernel takes its datagrams in from now on.
    if (membership(sock.get(), group, interface, true) == -1) lab::die("join", joined);

    // 5. Only my own joins. Linux hands a socket bound to the port the datagrams of every
    //    group that any socket of this host joined there; IP_MULTICAST_ALL 0 says no.
    // TASK 11.multicast-all
    const int off = 0;
    const bool v4 = group.family() == AF_INET;
    if (setsockopt(sock.get(), v4 ? IPPROTO_IP : IPPROTO_IPV6,
                   v4 ? IP_MULTICAST_ALL : IPV6_MULTICAST_ALL, &off, sizeof off) == -1) {
        lab::die("setsockopt MULTICAST_ALL");
    }
    // END TASK
    const auto bound = lab::local_endpoint(sock.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("udp", *bound);

    // 6. recvfrom() and print, until --count datagrams or a stop signal.
    print_datagrams(sock.get(), count, lab::format_address(*bound));

    // 7. Leave the group, then close(). close() alone would leave it too; saying so is
    //    clearer, and a program that lives on may leave one group and join another.
    if (membership(sock.get(), group, interface, false) == -1) lab::warn("leave", joined);
    return lab::kExitOk;
}

namespace {

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

// Joins the group on the interface (join) or leaves it (!join), and returns what
// setsockopt() returned. IPv4: IP_ADD_MEMBERSHIP or IP_DROP_MEMBERSHIP at IPPROTO_IP, with
// an ip_mreqn {the group's sin_addr, interface.address, interface.index}. IPv6:
// IPV6_JOIN_GROUP or IPV6_LEAVE_GROUP at IPPROTO_IPV6, with an ipv6_mreq {the group's
// sin6_addr, interface.index}.
int membership(int fd, const lab::Endpoint& group, const mcast::Interface& interface, bool join) {
    // TASK 11.membership
    // KIT: return lab::todo<int>("11.membership");
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
    // END TASK
}

// As in lab 10: one datagram per recvfrom(), whole, from any sender; exactly its bytes and
// a newline on stdout (lab::print_payload). Stops after `count` datagrams (0: never) or
// once a stop signal has come: the signal interrupts recvfrom() with EINTR, which goes
// back to the loop's check. Any other failure is fatal: lab::die("recvfrom", where).
void print_datagrams(int fd, long long count, const std::string& where) {
    // TASK 11.receive
    std::vector<char> buffer(kBufferSize);
    for (long long received = 0; !lab::stop_requested() && (count == 0 || received < count);) {
        const ssize_t n = recvfrom(fd, buffer.data(), buffer.size(), 0, nullptr, nullptr);
        if (n == -1 && errno == EINTR) continue;  // a signal: back to the check
        if (n == -1) lab::die("recvfrom", where);
        lab::print_payload({buffer.data(), static_cast<std::size_t>(n)});
        ++received;
    }
    // END TASK
}

}  // namespace
