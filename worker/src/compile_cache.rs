//! The on-disk cache of compiled modules, keyed by (module hash, engine compatibility hash).
//!
//! A peer compiles each module once per engine flavor and keeps the artefact, so a restarted
//! worker (or a restarted executor process, see [`crate::supervisor`]) reloads it in
//! milliseconds instead of recompiling.
//!
//! **Trust.** Loading compiled code runs it natively, so this cache only ever holds artefacts
//! this peer produced itself with [`wasmtime::Module::serialize`]; compiled code received from
//! anywhere else is never deserialized (peers exchange wasm bytes, never `.cwasm`). Each file
//! starts with a header binding it to its module id and engine key, followed by the BLAKE3 of
//! the payload; a file whose header or hash does not match (truncated, corrupted, from another
//! engine build) is deleted and the module recompiled.

use std::io;
use std::path::{Path, PathBuf};

use ova_jobs::BlobId;
use wasmtime::{Engine, Module};

const MAGIC: &[u8; 8] = b"OVACWSM1";
const HEADER: usize = 8 + 32 + 32 + 32;

/// A directory of compiled modules.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// Opens (creating if needed) the cache at `dir`.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, compat: &[u8; 32], module: &BlobId) -> PathBuf {
        let engine = blake3::Hash::from_bytes(*compat).to_hex();
        self.dir.join(&engine[..32]).join(format!("{module}.cwasm"))
    }

    /// Loads the compiled `module` for the engine with key `compat`, if cached and intact.
    pub fn load(&self, engine: &Engine, compat: &[u8; 32], module: &BlobId) -> Option<Module> {
        let path = self.path(compat, module);
        let bytes = std::fs::read(&path).ok()?;
        let intact = bytes.len() > HEADER
            && &bytes[..8] == MAGIC
            && bytes[8..40] == module.0
            && bytes[40..72] == *compat
            && bytes[72..104] == *blake3::hash(&bytes[HEADER..]).as_bytes();
        if !intact {
            tracing::warn!(path = %path.display(), "discarding a corrupt compiled-code cache entry");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        match deserialize(engine, &bytes[HEADER..]) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding an unloadable cache entry");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `compiled` (which this process just compiled) under its key. Writes a temporary
    /// file and renames it, so readers never see a partial entry.
    pub fn store(&self, compat: &[u8; 32], module: &BlobId, compiled: &Module) -> io::Result<()> {
        let payload = compiled.serialize().map_err(|e| io::Error::other(e.to_string()))?;
        let path = self.path(compat, module);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&module.0);
        out.extend_from_slice(compat);
        out.extend_from_slice(blake3::hash(&payload).as_bytes());
        out.extend_from_slice(&payload);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &out)?;
        std::fs::rename(&tmp, &path)
    }
}

/// Deserializes an artefact from this peer's own cache.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, payload: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: `Module::deserialize` trusts its input to be the output of `Module::serialize`
    // from a compatible engine. Our payloads come only from `CompileCache::store` in this
    // peer's private (0700) cache directory, bound by the header to this module and engine key
    // and checked against their BLAKE3 hash just before this call; wasmtime additionally
    // checks engine compatibility. Nothing received from another peer is ever written here.
    unsafe { Module::deserialize(engine, payload) }
}
