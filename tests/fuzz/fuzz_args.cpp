// Fuzzes lab::Args::try_parse with arbitrary command lines (arguments split at NUL bytes),
// the same options a lab registers. Whatever the input: no crash, and a result that says
// what happened (a reason whenever it is an error).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/args.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::vector<std::string> words{"prog"};
    std::string word;
    for (std::size_t i = 0; i < size; ++i) {
        if (data[i] == 0) {
            words.push_back(word);
            word.clear();
        } else {
            word.push_back(static_cast<char>(data[i]));
        }
    }
    words.push_back(word);
    std::vector<char*> argv;
    argv.reserve(words.size() + 1);
    for (std::string& w : words)
        argv.push_back(w.data());
    argv.push_back(nullptr);

    bool quiet = false;
    long long count = 0;
    double timeout = 0;
    std::string name;
    lab::Args args("usage: prog\n");
    args.host_port("127.0.0.1", 9901, lab::Positionals::kHostPort);
    args.flag("--quiet", &quiet);
    args.flag("--no-quiet", &quiet, false);
    args.option("--count", &count, 0, 1000);
    args.seconds("--timeout", &timeout);
    args.option("--name", &name);
    std::string problem;
    const auto outcome = args.try_parse(static_cast<int>(words.size()), argv.data(), &problem);
    if (outcome == lab::Args::Outcome::kError && problem.empty()) std::abort();
    if (outcome == lab::Args::Outcome::kOk && (count < 0 || count > 1000)) std::abort();
    if (outcome == lab::Args::Outcome::kOk && args.given("--timeout") &&
        !(timeout > 0 && timeout <= 86400.0)) {
        std::abort();
    }
    return 0;
}
