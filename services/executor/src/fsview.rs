//! `wasi:filesystem` for a worker: wasmtime-wasi's implementation, seen through the worker's
//! [`Files`](crate::files::Files), which makes what the guest observes deterministic (sorted
//! listings, no timestamps, metadata hashes numbered in order of first use) and keeps its
//! read-only files read-only. Everything else is wasmtime-wasi's own, call for call.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, HostDirectoryEntryStream, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, OutputStream, Pollable, ReaddirIterator,
    StreamError, StreamResult,
};

use crate::files::Files;

/// The view the filesystem bindings are given.
pub(crate) struct FsView<'a> {
    pub inner: WasiFilesystemCtxView<'a>,
    pub files: &'a mut Files,
}

/// The marker type for [`FsView`] in the linker.
pub(crate) struct HasFs;

impl HasData for HasFs {
    type Data<'a> = FsView<'a>;
}

impl FsView<'_> {
    /// The host path of `path` under the directory descriptor `fd`, if it is one.
    fn host_path(&self, fd: &Resource<Descriptor>, path: &str) -> Option<PathBuf> {
        match self.inner.table.get(fd).ok()? {
            Descriptor::Dir(dir) => {
                let at = std::fs::read_link(format!("/proc/self/fd/{}", dir.dir.as_raw_fd()));
                Some(at.ok()?.join(path))
            }
            Descriptor::File(_) => None,
        }
    }

    /// Refuses a change to a read-only file (or a directory holding one) at `path`.
    fn guard(&self, fd: &Resource<Descriptor>, path: &str, follow: bool) -> FsResult<()> {
        if self.files.read_only.is_empty() {
            return Ok(());
        }
        let Some(target) = self.host_path(fd, path) else {
            return Ok(());
        };
        let meta = if follow {
            std::fs::metadata(&target)
        } else {
            std::fs::symlink_metadata(&target)
        };
        match meta {
            Ok(meta)
                if self.files.read_only.contains(&(meta.dev(), meta.ino()))
                    || self
                        .files
                        .read_only_dirs
                        .contains(&(meta.dev(), meta.ino())) =>
            {
                Err(ErrorCode::NotPermitted.into())
            }
            _ => Ok(()),
        }
    }
}

impl FsView<'_> {
    /// `stream`, writing within the invocation's budget.
    fn budgeted(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let trap =
            |e: wasmtime::component::ResourceTableError| FsError::trap(wasmtime::Error::new(e));
        let inner = self.inner.table.delete(stream).map_err(trap)?;
        let wrapped: DynOutputStream = Box::new(Budgeted {
            inner,
            budget: self.files.budget.clone(),
            exceeded: self.files.exceeded.clone(),
        });
        self.inner.table.push(wrapped).map_err(trap)
    }
}

/// A file's output stream that takes what it writes from the invocation's budget.
struct Budgeted {
    inner: DynOutputStream,
    budget: std::sync::Arc<std::sync::atomic::AtomicI64>,
    exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl OutputStream for Budgeted {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        Files::spend(&self.budget, &self.exceeded, bytes.len())
            .map_err(|m| StreamError::trap(&m))?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Budgeted {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

impl preopens::Host for FsView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        preopens::Host::get_directories(&mut self.inner)
    }
}

impl types::Host for FsView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl HostDescriptor for FsView<'_> {
    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.inner.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.inner.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<DescriptorFlags> {
        self.inner.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.inner.get_type(fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        self.files.dirty = true;
        self.inner.set_size(fd, size).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.inner.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.inner.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        self.files.dirty = true;
        Files::spend(&self.files.budget, &self.files.exceeded, buf.len())
            .map_err(|m| FsError::trap(wasmtime::Error::msg(m)))?;
        self.inner.write(fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<ReaddirIterator>> {
        // Read whole and sorted: the order of a host directory is the host's, not the worker's.
        let stream = self.inner.read_directory(fd).await?;
        let entries = self
            .inner
            .table
            .delete(stream)
            .map_err(|e| FsError::trap(wasmtime::Error::new(e)))?;
        let mut listing = Vec::new();
        for entry in entries {
            let entry = entry?;
            listing.push((entry.name, kind_code(entry.type_)));
        }
        listing.sort();
        let rep = self.files.next_listing;
        self.files.next_listing = rep.wrapping_add(1);
        self.files.listings.insert(rep, VecDeque::from(listing));
        Ok(Resource::new_own(rep))
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.inner.sync(fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.files.dirty = true;
        self.inner.create_directory_at(fd, path).await
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.inner.stat(fd).await.map(timeless)
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.inner.stat_at(fd, path_flags, path).await.map(timeless)
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.inner
            .set_times_at(fd, path_flags, path, atim, mtim)
            .await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.files.dirty = true;
        self.inner
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let writes = flags.contains(DescriptorFlags::WRITE)
            || flags.contains(DescriptorFlags::MUTATE_DIRECTORY)
            || oflags.contains(OpenFlags::TRUNCATE);
        if writes {
            self.guard(&fd, &path, path_flags.contains(PathFlags::SYMLINK_FOLLOW))?;
        }
        if writes || oflags.contains(OpenFlags::CREATE) {
            self.files.dirty = true;
        }
        let opened = self
            .inner
            .open_at(fd, path_flags, path, oflags, flags)
            .await?;
        if writes {
            self.files.writable.insert(opened.rep());
        }
        Ok(opened)
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.files.writable.remove(&fd.rep());
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        self.inner.readlink_at(fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.guard(&fd, &path, false)?;
        self.files.dirty = true;
        self.inner.remove_directory_at(fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.guard(&fd, &old_path, false)?;
        self.guard(&new_fd, &new_path, false)?;
        self.files.dirty = true;
        self.inner.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        self.files.dirty = true;
        self.inner.symlink_at(fd, src_path, dest_path).await
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.guard(&fd, &path, false)?;
        self.files.dirty = true;
        self.inner.unlink_file_at(fd, path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.inner.read_via_stream(fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.files.dirty = true;
        let stream = self.inner.write_via_stream(fd, offset)?;
        self.budgeted(stream)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.files.dirty = true;
        let stream = self.inner.append_via_stream(fd)?;
        self.budgeted(stream)
    }

    async fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        self.inner.is_same_object(a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        let real = self.inner.metadata_hash(fd).await?;
        Ok(self.files.numbered(real.upper, real.lower))
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        let real = self.inner.metadata_hash_at(fd, path_flags, path).await?;
        Ok(self.files.numbered(real.upper, real.lower))
    }
}

impl HostDirectoryEntryStream for FsView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<ReaddirIterator>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        let Some(listing) = self.files.listings.get_mut(&stream.rep()) else {
            return Err(ErrorCode::BadDescriptor.into());
        };
        Ok(listing
            .pop_front()
            .map(|(name, kind)| types::DirectoryEntry {
                type_: kind_of(kind),
                name,
            }))
    }

    fn drop(&mut self, stream: Resource<ReaddirIterator>) -> wasmtime::Result<()> {
        self.files.listings.remove(&stream.rep());
        Ok(())
    }
}

impl Files {
    /// The worker's number for a host metadata hash.
    fn numbered(&mut self, upper: u64, lower: u64) -> types::MetadataHashValue {
        let next = self.hashes.len() as u64 + 1;
        let n = *self.hashes.entry((upper, lower)).or_insert(next);
        types::MetadataHashValue { lower: n, upper: 0 }
    }
}

/// A stat without its timestamps, which a replay would see differ.
fn timeless(stat: types::DescriptorStat) -> types::DescriptorStat {
    types::DescriptorStat {
        data_access_timestamp: None,
        data_modification_timestamp: None,
        status_change_timestamp: None,
        ..stat
    }
}

fn kind_code(kind: types::DescriptorType) -> u8 {
    use types::DescriptorType as T;
    match kind {
        T::Unknown => 0,
        T::BlockDevice => 1,
        T::CharacterDevice => 2,
        T::Directory => 3,
        T::Fifo => 4,
        T::SymbolicLink => 5,
        T::RegularFile => 6,
        T::Socket => 7,
    }
}

fn kind_of(code: u8) -> types::DescriptorType {
    use types::DescriptorType as T;
    match code {
        1 => T::BlockDevice,
        2 => T::CharacterDevice,
        3 => T::Directory,
        4 => T::Fifo,
        5 => T::SymbolicLink,
        6 => T::RegularFile,
        7 => T::Socket,
        _ => T::Unknown,
    }
}

/// Adds `wasi:filesystem` through [`FsView`], in place of wasmtime-wasi's own.
pub(crate) fn add_to_linker<T: 'static + Send>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> FsView<'_>,
) -> wasmtime::Result<()> {
    types::add_to_linker::<T, HasFs>(linker, view)?;
    preopens::add_to_linker::<T, HasFs>(linker, view)?;
    Ok(())
}
