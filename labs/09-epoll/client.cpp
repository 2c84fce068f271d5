// 09-epoll client: the TCP echo client of lab 03, with this lab's default port. The server
// changed (one thread, epoll); the protocol did not.
#define LAB_DEFAULT_PORT 9909
#include "labs/03-tcp-echo/client.cpp"
