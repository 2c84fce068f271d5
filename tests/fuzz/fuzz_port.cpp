// Fuzzes lab::parse_port: accepted text is digits only, and reads back to the same value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/endpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const auto port = lab::parse_port(text);
    if (!port) return 0;
    if (text.empty() || text.find_first_not_of("0123456789") != std::string_view::npos) {
        std::abort();  // accepted something that is not all digits
    }
    if (std::stoul(std::string(text)) != *port) std::abort();
    return 0;
}
