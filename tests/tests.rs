//! Integration tests: the real `steward` binary, real child processes, real sockets.

mod helper;

mod api;
mod bench;
mod clients;
mod config;
mod damage;
mod environment;
mod exec;
mod exits;
mod health;
mod hostile;
mod jobs;
mod journal;
mod layers;
mod logs;
mod monitoring;
mod notify;
mod observe;
mod operator;
mod packaging;
mod postgres;
mod readiness;
mod reload;
mod restart;
mod stop;
mod timelines;
