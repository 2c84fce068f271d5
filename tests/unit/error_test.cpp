#include "common/error.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace {

TEST(Error, ProgramNameIsTheBasename) {
    lab::set_program_name("/home/student/build/01-udp-echo/server");
    EXPECT_EQ(lab::program_name(), "server");
    lab::set_program_name("client");
    EXPECT_EQ(lab::program_name(), "client");
}

TEST(Error, FormatIsProgWhatAddressReason) {
    lab::set_program_name("server");
    EXPECT_EQ(lab::format_error("bind", "127.0.0.1:9901", std::strerror(EADDRINUSE)),
              "server: bind 127.0.0.1:9901: Address already in use");
    EXPECT_EQ(lab::format_error("socket", "", "Too many open files"),
              "server: socket: Too many open files");
}

TEST(Error, ReportPrintsOneLineToStderr) {
    lab::set_program_name("client");
    testing::internal::CaptureStderr();
    lab::report_error("recv", "127.0.0.1:9", ECONNREFUSED);
    lab::report("no reply from 127.0.0.1:9 within 2s");
    EXPECT_EQ(testing::internal::GetCapturedStderr(),
              "client: recv 127.0.0.1:9: Connection refused\n"
              "client: no reply from 127.0.0.1:9 within 2s\n");
}

TEST(Error, DieExitsWithStatusOne) {
    lab::set_program_name("server");
    EXPECT_EXIT(lab::die_error("bind", "[::1]:1", EACCES), testing::ExitedWithCode(1),
                "^server: bind \\[::1\\]:1: Permission denied\n$");
    EXPECT_EXIT(lab::die_message("resolve", "x", "Temporary failure"), testing::ExitedWithCode(1),
                "^server: resolve x: Temporary failure\n$");
    EXPECT_EXIT(lab::die("gave up"), testing::ExitedWithCode(1), "^server: gave up\n$");
}

TEST(Error, NotImplementedSaysWhatIsMissing) {
    lab::set_program_name("server");
    EXPECT_EXIT(lab::not_implemented("lab 01: bind()"), testing::ExitedWithCode(1),
                "^server: not implemented: lab 01: bind\\(\\)\n$");
    EXPECT_EXIT((void)lab::todo<int>("lab 03: accept()"), testing::ExitedWithCode(1),
                "not implemented: lab 03: accept");
}

TEST(Error, ExitCodesAreDistinctAndNeverZeroOnFailure) {
    EXPECT_EQ(lab::kExitOk, 0);
    EXPECT_EQ(lab::kExitFailure, 1);
    EXPECT_EQ(lab::kExitUsage, 2);
}

}  // namespace
