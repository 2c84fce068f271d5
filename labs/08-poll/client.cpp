// 08-poll client: the TCP echo client of lab 03, with this lab's default port. The
// server is what this lab is about; the protocol (send a line, read the same bytes back)
// has not changed.
#define LAB_DEFAULT_PORT 9908
#include "labs/03-tcp-echo/client.cpp"
