#include "common/args.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <string>
#include <vector>

#include "common/error.hpp"

namespace {

constexpr const char* kUsage = "usage: prog [--host ADDR] [--port N]\n";

// Keeps the argument strings alive and hands out the char** that parse() wants.
struct Argv {
    explicit Argv(std::vector<std::string> words) : storage(std::move(words)) {
        for (std::string& w : storage)
            pointers.push_back(w.data());
        pointers.push_back(nullptr);
    }
    int argc() const { return static_cast<int>(storage.size()); }
    char** argv() { return pointers.data(); }
    std::vector<std::string> storage;
    std::vector<char*> pointers;
};

struct Parsed {
    std::string host;
    std::uint16_t port = 0;
    bool quiet = false;
    long long count = -1;
    double timeout = -1;
    std::string name;
};

Parsed parse(std::vector<std::string> words, lab::Positionals positionals) {
    words.insert(words.begin(), "/some/dir/prog");
    Argv argv(words);
    Parsed p;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", 9901, positionals);
    args.flag("--quiet", &p.quiet);
    args.option("--count", &p.count, 0, 100);
    args.seconds("--timeout", &p.timeout);
    args.option("--name", &p.name);
    args.parse(argv.argc(), argv.argv());
    p.host = args.host();
    p.port = args.port();
    return p;
}

TEST(Args, DefaultsWhenNothingIsGiven) {
    const Parsed p = parse({}, lab::Positionals::kPort);
    EXPECT_EQ(p.host, "127.0.0.1");
    EXPECT_EQ(p.port, 9901);
    EXPECT_FALSE(p.quiet);
    EXPECT_EQ(lab::program_name(), "prog");
}

TEST(Args, LongShortAndEqualsForms) {
    Parsed p = parse({"--host", "::1", "--port", "0"}, lab::Positionals::kPort);
    EXPECT_EQ(p.host, "::1");
    EXPECT_EQ(p.port, 0);
    p = parse({"-H", "localhost", "-p", "65535"}, lab::Positionals::kPort);
    EXPECT_EQ(p.host, "localhost");
    EXPECT_EQ(p.port, 65535);
    p = parse({"--port=7", "--count=3", "--timeout=0.5", "--name=x=y", "--quiet"},
              lab::Positionals::kPort);
    EXPECT_EQ(p.port, 7);
    EXPECT_EQ(p.count, 3);
    EXPECT_DOUBLE_EQ(p.timeout, 0.5);
    EXPECT_EQ(p.name, "x=y");
    EXPECT_TRUE(p.quiet);
}

TEST(Args, ServerPositionalIsThePort) {
    EXPECT_EQ(parse({"4000"}, lab::Positionals::kPort).port, 4000);
}

TEST(Args, ClientPositionalsAreHostThenPort) {
    Parsed p = parse({"::1"}, lab::Positionals::kHostPort);
    EXPECT_EQ(p.host, "::1");
    EXPECT_EQ(p.port, 9901);
    p = parse({"10.0.0.1", "4000"}, lab::Positionals::kHostPort);
    EXPECT_EQ(p.host, "10.0.0.1");
    EXPECT_EQ(p.port, 4000);
}

TEST(Args, DoubleDashEndsOptions) {
    EXPECT_EQ(parse({"--", "4001"}, lab::Positionals::kPort).port, 4001);
}

TEST(Args, HelpPrintsUsageAndExitsZero) {
    // The usage goes to stdout (so `server --help | less` works) and nothing to stderr.
    EXPECT_EXIT(parse({"--help"}, lab::Positionals::kPort), testing::ExitedWithCode(0), "^$");
    EXPECT_EXIT(parse({"-h"}, lab::Positionals::kPort), testing::ExitedWithCode(0), "^$");
}

// Each bad command line exits 2 with "prog: REASON" and then the usage on stderr.
void expect_usage_error(std::vector<std::string> words, const std::string& reason,
                        lab::Positionals positionals = lab::Positionals::kPort) {
    EXPECT_EXIT(parse(words, positionals), testing::ExitedWithCode(lab::kExitUsage),
                "prog: " + reason + ".*\nusage: prog")
        << words.front();
}

TEST(Args, BadArgumentsExitTwoWithAReason) {
    expect_usage_error({"--no-such-flag"}, "unknown option '--no-such-flag'");
    expect_usage_error({"-x"}, "unknown option '-x'");
    expect_usage_error({"--port", "70000"}, "bad port '70000'");
    expect_usage_error({"--port", "-1"}, "bad port '-1'");
    expect_usage_error({"--port", "nine"}, "bad port 'nine'");
    expect_usage_error({"--port", ""}, "bad port ''");
    expect_usage_error({"--port"}, "missing value after --port");
    expect_usage_error({"--quiet=yes"}, "--quiet takes no value");
    expect_usage_error({"--count", "101"}, "bad value '101' for --count");
    expect_usage_error({"--count", "2.5"}, "bad value '2.5' for --count");
    expect_usage_error({"--timeout", "0"}, "bad value '0' for --timeout");
    expect_usage_error({"--timeout", "inf"}, "bad value 'inf' for --timeout");
    expect_usage_error({"--host", ""}, "empty host");
    expect_usage_error({"1", "2"}, "unexpected argument '2'");
    expect_usage_error({"9x"}, "bad port '9x'");
    expect_usage_error({"h", "1", "extra"}, "unexpected argument 'extra'",
                       lab::Positionals::kHostPort);
    expect_usage_error({"anything"}, "unexpected argument 'anything'", lab::Positionals::kNone);
}

TEST(Args, GivenTellsWhichOptionsAppeared) {
    Argv argv({"prog", "--quiet", "--port=1"});
    bool quiet = false;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", 1, lab::Positionals::kNone);
    args.flag("--quiet", &quiet);
    args.parse(argv.argc(), argv.argv());
    EXPECT_TRUE(args.given("--quiet"));
    EXPECT_TRUE(args.given("--port"));
    EXPECT_FALSE(args.given("--host"));
}

TEST(Args, FlagCanStoreFalse) {
    Argv argv({"prog", "--no-loop"});
    bool loop = true;
    lab::Args args(kUsage);
    args.flag("--no-loop", &loop, false);
    args.parse(argv.argc(), argv.argv());
    EXPECT_FALSE(loop);
}

TEST(Args, SecondsArePositiveAndAtMostADay) {
    for (const char* bad : {"0", "-1", "0.0", "86401", "inf", "nan", "1s", ""}) {
        Argv argv({"prog", "--timeout", bad});
        double timeout = 7;
        lab::Args args(kUsage);
        args.seconds("--timeout", &timeout);
        std::string problem;
        EXPECT_EQ(args.try_parse(argv.argc(), argv.argv(), &problem), lab::Args::Outcome::kError)
            << bad;
        EXPECT_NE(problem.find("more than 0"), std::string::npos) << problem;
    }
    Argv tiny({"prog", "--timeout", "0.0000001"});
    double timeout = 7;
    lab::Args args(kUsage);
    args.seconds("--timeout", &timeout);
    args.parse(tiny.argc(), tiny.argv());
    EXPECT_DOUBLE_EQ(timeout, 0.0000001);
}

TEST(Args, AnArgumentWithControlBytesIsEscapedInTheError) {
    Argv argv({"prog", "--port", "1\nready: tcp 1.2.3.4:5"});
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", 1, lab::Positionals::kNone);
    EXPECT_EXIT(args.parse(argv.argc(), argv.argv()), testing::ExitedWithCode(2),
                "prog: bad port '1\\\\nready: tcp 1.2.3.4:5' \\(want 0 to 65535\\)\n");
}

TEST(Args, TryParseReportsInsteadOfExiting) {
    Argv argv({"prog", "--port", "x"});
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", 1, lab::Positionals::kNone);
    std::string problem;
    EXPECT_EQ(args.try_parse(argv.argc(), argv.argv(), &problem), lab::Args::Outcome::kError);
    EXPECT_EQ(problem, "bad port 'x' (want 0 to 65535)");
    Argv help({"prog", "--help"});
    EXPECT_EQ(args.try_parse(help.argc(), help.argv(), &problem), lab::Args::Outcome::kHelp);
}

lab::Endpoint endpoint_for(const std::string& host) {
    Argv argv({"prog", "--host", host, "--port", "5"});
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", 1, lab::Positionals::kNone);
    args.parse(argv.argc(), argv.argv());
    return args.endpoint(SOCK_DGRAM);
}

TEST(Args, EndpointResolvesHostAndPort) {
    EXPECT_EQ(lab::format_address(endpoint_for("127.0.0.1")), "127.0.0.1:5");
    EXPECT_EQ(lab::format_address(endpoint_for("::1")), "[::1]:5");
}

TEST(Args, UnparsableOrUnknownHostIsAUsageError) {
    EXPECT_EXIT(endpoint_for("300.1.1.1"), testing::ExitedWithCode(2),
                "prog: bad host '300.1.1.1': not an IPv4 or IPv6 address");
    EXPECT_EXIT(endpoint_for("::zz"), testing::ExitedWithCode(2),
                "prog: bad host '::zz': not an IPv4 or IPv6 address");
    EXPECT_EXIT(endpoint_for("no-such-host.invalid"), testing::ExitedWithCode(2),
                "prog: bad host 'no-such-host.invalid'");
}

TEST(ParseNumbers, Strict) {
    long long i = 0;
    EXPECT_TRUE(lab::parse_integer("42", 0, 100, &i));
    EXPECT_EQ(i, 42);
    EXPECT_TRUE(lab::parse_integer("-5", -10, 10, &i));
    EXPECT_FALSE(lab::parse_integer("", 0, 100, &i));
    EXPECT_FALSE(lab::parse_integer("+5", 0, 100, &i));
    EXPECT_FALSE(lab::parse_integer("5 ", 0, 100, &i));
    EXPECT_FALSE(lab::parse_integer("99999999999999999999", 0, 100, &i));
}

}  // namespace
