#include "common/endpoint.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "common/fd.hpp"

namespace {

TEST(ParsePort, AcceptsTheWholeRange) {
    EXPECT_EQ(lab::parse_port("0"), 0);
    EXPECT_EQ(lab::parse_port("9901"), 9901);
    EXPECT_EQ(lab::parse_port("65535"), 65535);
    EXPECT_EQ(lab::parse_port("00080"), 80);
}

TEST(ParsePort, RefusesAnythingElse) {
    for (const char* bad : {"", "-1", "65536", "99999", "100000", "9x", "x9", " 80", "80 ", "+80",
                            "0x50", "1e3", "8 0", "4294967297"}) {
        EXPECT_FALSE(lab::parse_port(bad).has_value()) << "'" << bad << "'";
    }
}

lab::Endpoint first(const char* host, std::uint16_t port, int socktype = SOCK_DGRAM) {
    const lab::Resolution r = lab::resolve(host, port, socktype);
    EXPECT_FALSE(r.endpoints.empty()) << host << ": " << r.error;
    return r.endpoints.empty() ? lab::Endpoint{} : r.endpoints.front();
}

TEST(Resolve, Ipv4LiteralRoundTrips) {
    const lab::Endpoint e = first("127.0.0.1", 9901);
    EXPECT_EQ(e.family(), AF_INET);
    EXPECT_EQ(e.size, sizeof(sockaddr_in));
    EXPECT_EQ(lab::format_address(e), "127.0.0.1:9901");
}

TEST(Resolve, Ipv6LiteralIsBracketed) {
    const lab::Endpoint e = first("::1", 9901);
    EXPECT_EQ(e.family(), AF_INET6);
    EXPECT_EQ(lab::format_address(e), "[::1]:9901");
    EXPECT_EQ(lab::format_address(first("2001:db8::42", 0)), "[2001:db8::42]:0");
}

TEST(Resolve, NamesGoThroughGetaddrinfo) {
    const lab::Endpoint e = first("localhost", 80, SOCK_STREAM);
    const std::string text = lab::format_address(e);
    EXPECT_TRUE(text == "127.0.0.1:80" || text == "[::1]:80") << text;
}

TEST(Resolve, BadHostsSayWhy) {
    for (const char* bad : {"", "300.1.1.1", "no-such-host.invalid", "::g", "1.2.3.4.5"}) {
        const lab::Resolution r = lab::resolve(bad, 1, SOCK_DGRAM);
        EXPECT_TRUE(r.endpoints.empty()) << bad;
        EXPECT_FALSE(r.error.empty()) << bad;
    }
}

TEST(Resolve, ANumericLookingHostIsNeverLookedUp) {
    // Taken as a literal or refused, without asking a resolver: no DNS query leaves.
    for (const char* bad : {"999.1.1.1", "1.2.3.4.5", "::g", "fe80:::1"}) {
        const lab::Resolution r = lab::resolve(bad, 1, SOCK_DGRAM);
        EXPECT_EQ(r.error, "not an IPv4 or IPv6 address") << bad;
        EXPECT_FALSE(r.resolver_failed) << bad;
    }
}

TEST(Resolve, AnUnknownNameIsNotAResolverFailure) {
    const lab::Resolution r = lab::resolve("no-such-host.invalid", 1, SOCK_DGRAM);
    EXPECT_TRUE(r.endpoints.empty());
    EXPECT_FALSE(r.error.empty());
}

TEST(Endpoint, EqualityComparesAddressAndPort) {
    EXPECT_TRUE(first("127.0.0.1", 5) == first("127.0.0.1", 5));
    EXPECT_FALSE(first("127.0.0.1", 5) == first("127.0.0.1", 6));
    EXPECT_FALSE(first("127.0.0.1", 5) == first("127.0.0.2", 5));
    EXPECT_FALSE(first("127.0.0.1", 5) == first("::1", 5));
    EXPECT_TRUE(first("::1", 5) == first("::1", 5));
}

TEST(FormatAddress, UnixPathAbstractAndUnnamed) {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strcpy(un.sun_path, "/tmp/lab.sock");
    const auto path_len =
        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + std::strlen(un.sun_path) + 1);
    EXPECT_EQ(lab::format_address(reinterpret_cast<sockaddr*>(&un), path_len), "/tmp/lab.sock");

    sockaddr_un abstract{};
    abstract.sun_family = AF_UNIX;
    std::memcpy(abstract.sun_path, "\0lab12", 6);
    const auto abstract_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 6);
    EXPECT_EQ(lab::format_address(reinterpret_cast<sockaddr*>(&abstract), abstract_len), "@lab12");

    EXPECT_EQ(lab::format_address(reinterpret_cast<sockaddr*>(&un), sizeof(sa_family_t)),
              "(unnamed)");
    EXPECT_EQ(lab::format_address(reinterpret_cast<sockaddr*>(&un), 0), "(unnamed)");
}

TEST(FormatAddress, KeepsErrnoAndLeavesEscapingToTheWriter) {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, "\0a\nb", 4);
    errno = EPIPE;
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 4);
    EXPECT_EQ(lab::format_address(reinterpret_cast<sockaddr*>(&un), len), "@a\nb");
    EXPECT_EQ(errno, EPIPE);
}

TEST(FormatAddress, UnknownFamily) {
    sockaddr sa{};
    sa.sa_family = AF_APPLETALK;
    EXPECT_EQ(lab::format_address(&sa, sizeof sa), "(family " + std::to_string(AF_APPLETALK) + ")");
}

TEST(LocalEndpoint, ShowsThePortTheKernelChose) {
    const lab::Fd sock(socket(AF_INET, SOCK_DGRAM, 0));
    ASSERT_TRUE(sock);
    lab::Endpoint any = first("127.0.0.1", 0);
    ASSERT_EQ(bind(sock.get(), any.addr(), any.size), 0);
    const auto bound = lab::local_endpoint(sock.get());
    ASSERT_TRUE(bound.has_value());
    const auto port = ntohs(reinterpret_cast<const sockaddr_in*>(&bound->storage)->sin_port);
    EXPECT_NE(port, 0);
    EXPECT_EQ(lab::format_address(*bound), "127.0.0.1:" + std::to_string(port));
}

TEST(LocalEndpoint, FailsOnABadDescriptor) {
    EXPECT_FALSE(lab::local_endpoint(-1).has_value());
    EXPECT_EQ(errno, EBADF);
}

}  // namespace
