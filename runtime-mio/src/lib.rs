//! The mio (epoll) reactor runtime.
