//! The reactor's asynchronous engines (LUNs on Ceph RBD): an
//! [`iscsi_target::engines::EngineSet`] whose completion eventfds are registered in the
//! reactor's [`mio::Poll`] under tokens from [`ENGINE_BASE`] up. Every completion thus
//! wakes the reactor that owns the connection; which requests go to an engine, and what
//! their results mean, is decided in `iscsi-target`.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use iscsi_target::driver::IoJob;
use iscsi_target::engines::{EngineId, EngineSet, RETIRE_INTERVAL};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Engine tokens: `ENGINE_BASE + EngineId` (connection tokens count up from 1 and never
/// get there).
const ENGINE_BASE: usize = 1 << (usize::BITS - 1);

/// One reactor's engines and the jobs in flight on them.
#[derive(Debug, Default)]
pub(crate) struct Engines {
    set: EngineSet<Token>,
}

impl Engines {
    /// The engine a poll event's token names, if it names one.
    pub(crate) fn engine_of(token: Token) -> Option<EngineId> {
        token.0.checked_sub(ENGINE_BASE)
    }

    /// Starts `job` (of connection `token`) on its LUN's engine; returns it when it is not
    /// for an engine.
    pub(crate) fn submit(
        &mut self,
        registry: &Registry,
        token: Token,
        job: IoJob,
    ) -> Option<IoJob> {
        self.set.submit(token, job, &mut |id, fd| {
            registry.register(
                &mut SourceFd(&fd),
                Token(ENGINE_BASE + id),
                Interest::READABLE,
            )
        })
    }

    /// Reaps engine `id`: every finished job goes to `done` with its connection's token.
    pub(crate) fn reap(&mut self, id: EngineId, done: &mut dyn FnMut(Token, IoJob)) {
        self.set.reap(id, done);
    }

    /// Drops the engines of removed LUNs.
    pub(crate) fn retire(&mut self, registry: &Registry) {
        self.set
            .retire(Instant::now(), &mut |_, fd| deregister(registry, fd));
    }

    /// How long the reactor may sleep at most for [`Engines::retire`] to run in time.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        (!self.set.is_empty()).then_some(RETIRE_INTERVAL)
    }

    /// Stops every engine (waiting for what runs in them); the reactor is exiting.
    pub(crate) fn shutdown(&mut self, registry: &Registry) {
        self.set.shutdown(&mut |_, fd| deregister(registry, fd));
    }
}

fn deregister(registry: &Registry, fd: RawFd) {
    let _ = registry.deregister(&mut SourceFd(&fd));
}
