#include "common/error.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

namespace {

TEST(Error, ProgramNameIsTheBasename) {
    lab::set_program_name("/home/student/build/01-udp-echo/server");
    EXPECT_EQ(lab::program_name(), "server");
    lab::set_program_name("client");
    EXPECT_EQ(lab::program_name(), "client");
    lab::set_program_name("/tmp/evil\nready: tcp 1.2.3.4:5");  // argv[0] is untrusted too
    EXPECT_EQ(lab::program_name(), "evil\\nready: tcp 1.2.3.4:5");
}

TEST(Error, WarnIsProgWhatAddressReasonAndErrnoByDefault) {
    lab::set_program_name("client");
    testing::internal::CaptureStderr();
    lab::warn("recv", "127.0.0.1:9", ECONNREFUSED);
    errno = EADDRINUSE;
    lab::warn("bind", "127.0.0.1:9901");
    errno = EMFILE;
    lab::warn("socket");
    lab::note("no reply from 127.0.0.1:9 within 2s");
    EXPECT_EQ(testing::internal::GetCapturedStderr(),
              "client: recv 127.0.0.1:9: Connection refused\n"
              "client: bind 127.0.0.1:9901: Address already in use\n"
              "client: socket: Too many open files\n"
              "client: no reply from 127.0.0.1:9 within 2s\n");
}

TEST(Error, UntrustedTextNeverSplitsTheLine) {
    lab::set_program_name("server");
    testing::internal::CaptureStderr();
    lab::warn("sendto", "@x\nready: tcp 6.6.6.6:66\n\x1b]0;owned\x07", EPERM);
    lab::note("from \r\x1b[2K* alice left");
    EXPECT_EQ(testing::internal::GetCapturedStderr(),
              "server: sendto @x\\nready: tcp 6.6.6.6:66\\n\\x1b]0;owned\\x07: "
              "Operation not permitted\n"
              "server: from \\r\\x1b[2K* alice left\n");
}

TEST(Escape, PrintableTextAndUtf8PassUnchanged) {
    EXPECT_EQ(lab::escape("hello, world 123 ~!"), "hello, world 123 ~!");
    EXPECT_EQ(lab::escape("\xe4\xbd\xa0\xe5\xa5\xbd"), "\xe4\xbd\xa0\xe5\xa5\xbd");  // 你好
    EXPECT_EQ(lab::escape("caf\xc3\xa9 \xf0\x9f\x98\x80"), "caf\xc3\xa9 \xf0\x9f\x98\x80");
}

TEST(Escape, ControlBytesBackslashesAndBrokenUtf8AreEscaped) {
    EXPECT_EQ(lab::escape(std::string("a\0b", 3)), "a\\x00b");
    EXPECT_EQ(lab::escape("\n\r\t\\\x7f\x1b"), "\\n\\r\\t\\\\\\x7f\\x1b");
    EXPECT_EQ(lab::escape("\xff\xfe"), "\\xff\\xfe");           // never UTF-8
    EXPECT_EQ(lab::escape("\xc3"), "\\xc3");                    // cut short
    EXPECT_EQ(lab::escape("\xc0\x80"), "\\xc0\\x80");           // overlong NUL
    EXPECT_EQ(lab::escape("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // a surrogate
}

TEST(Escape, InvisibleUnicodeControlsAreEscaped) {
    EXPECT_EQ(lab::escape("\xc2\x9b"), "\\u009b");  // C1 CSI
    EXPECT_EQ(lab::escape("a\xe2\x80\xae"
                          "b"),
              "a\\u202eb");  // right-to-left override
    EXPECT_EQ(lab::escape("\xe2\x81\xa6"), "\\u2066");
}

TEST(Escape, KeepsErrno) {
    errno = ECONNRESET;
    (void)lab::escape("\x01");
    EXPECT_EQ(errno, ECONNRESET);
}

TEST(Error, DieAndFatalExitWithStatusOne) {
    lab::set_program_name("server");
    EXPECT_EXIT(lab::die("bind", "[::1]:1", EACCES), testing::ExitedWithCode(1),
                "^server: bind \\[::1\\]:1: Permission denied\n$");
    EXPECT_EXIT(lab::fatal("gave up"), testing::ExitedWithCode(1), "^server: gave up\n$");
}

TEST(Error, TodoNamesTheTask) {
    lab::set_program_name("server");
    EXPECT_EXIT(lab::todo("01.bind"), testing::ExitedWithCode(1),
                "^server: not implemented: task 01.bind \\(see the handout, \"Your turn\"\\)\n$");
    EXPECT_EXIT((void)lab::todo<int>("03.accept"), testing::ExitedWithCode(1),
                "not implemented: task 03.accept");
}

TEST(Error, ExitCodesAreDistinctAndNeverZeroOnFailure) {
    EXPECT_EQ(lab::kExitOk, 0);
    EXPECT_EQ(lab::kExitFailure, 1);
    EXPECT_EQ(lab::kExitUsage, 2);
}

}  // namespace
