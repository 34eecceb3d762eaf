//! The project's own declarations of the librados and librbd C functions the RBD store
//! uses (Debian `librados-dev`, `librbd-dev`; Ceph 16 and later). Only compiled with the
//! `rbd` feature, which is what links `librbd.so` and `librados.so`.
//!
//! Handles are opaque pointers. Functions return 0 (or a count) on success and a negative
//! errno on failure. An asynchronous call either fails immediately (negative return, the
//! completion is never called) or returns 0 and calls the completion's callback exactly
//! once, on a librbd thread, with the result in [`rbd_aio_get_return_value`].

#![allow(non_camel_case_types, missing_docs)]

use std::ffi::{c_char, c_int, c_void};

/// A cluster handle (`rados_t`).
pub(crate) type rados_t = *mut c_void;
/// A pool I/O context (`rados_ioctx_t`).
pub(crate) type rados_ioctx_t = *mut c_void;
/// An open image (`rbd_image_t`).
pub(crate) type rbd_image_t = *mut c_void;
/// An asynchronous completion (`rbd_completion_t`).
pub(crate) type rbd_completion_t = *mut c_void;
/// Completion callback: the completion and the `cb_arg` given at creation.
pub(crate) type rbd_callback_t = Option<unsafe extern "C" fn(rbd_completion_t, *mut c_void)>;
/// `rbd_diff_iterate2` callback: offset, length, whether the extent holds data, argument.
/// A negative return stops the iteration (and becomes its return value).
pub(crate) type rbd_diff_cb_t =
    Option<unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int>;

/// `LIBRADOS_OP_FLAG_FADVISE_FUA`: write through any librbd cache.
pub(crate) const LIBRADOS_OP_FLAG_FADVISE_FUA: c_int = 0x80;

/// `RBD_MAX_BLOCK_NAME_SIZE`.
const RBD_MAX_BLOCK_NAME_SIZE: usize = 24;
/// `RBD_MAX_IMAGE_NAME_SIZE`.
const RBD_MAX_IMAGE_NAME_SIZE: usize = 96;

/// `rbd_image_info_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct rbd_image_info_t {
    pub(crate) size: u64,
    pub(crate) obj_size: u64,
    pub(crate) num_objs: u64,
    pub(crate) order: c_int,
    pub(crate) block_name_prefix: [c_char; RBD_MAX_BLOCK_NAME_SIZE],
    pub(crate) parent_pool: i64,
    pub(crate) parent_name: [c_char; RBD_MAX_IMAGE_NAME_SIZE],
}

impl rbd_image_info_t {
    pub(crate) const fn zeroed() -> Self {
        Self {
            size: 0,
            obj_size: 0,
            num_objs: 0,
            order: 0,
            block_name_prefix: [0; RBD_MAX_BLOCK_NAME_SIZE],
            parent_pool: 0,
            parent_name: [0; RBD_MAX_IMAGE_NAME_SIZE],
        }
    }
}

#[link(name = "rados")]
unsafe extern "C" {
    pub(crate) fn rados_create2(
        pcluster: *mut rados_t,
        clustername: *const c_char,
        name: *const c_char,
        flags: u64,
    ) -> c_int;
    pub(crate) fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    pub(crate) fn rados_conf_parse_env(cluster: rados_t, var: *const c_char) -> c_int;
    pub(crate) fn rados_conf_set(
        cluster: rados_t,
        option: *const c_char,
        value: *const c_char,
    ) -> c_int;
    pub(crate) fn rados_connect(cluster: rados_t) -> c_int;
    pub(crate) fn rados_shutdown(cluster: rados_t);
    pub(crate) fn rados_ioctx_create(
        cluster: rados_t,
        pool_name: *const c_char,
        ioctx: *mut rados_ioctx_t,
    ) -> c_int;
    pub(crate) fn rados_ioctx_destroy(io: rados_ioctx_t);
}

#[link(name = "rbd")]
unsafe extern "C" {
    pub(crate) fn rbd_open(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub(crate) fn rbd_open_read_only(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub(crate) fn rbd_close(image: rbd_image_t) -> c_int;
    pub(crate) fn rbd_get_size(image: rbd_image_t, size: *mut u64) -> c_int;
    pub(crate) fn rbd_stat(
        image: rbd_image_t,
        info: *mut rbd_image_info_t,
        infosize: usize,
    ) -> c_int;

    pub(crate) fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: rbd_callback_t,
        c: *mut rbd_completion_t,
    ) -> c_int;
    pub(crate) fn rbd_aio_release(c: rbd_completion_t);
    pub(crate) fn rbd_aio_get_return_value(c: rbd_completion_t) -> isize;

    pub(crate) fn rbd_aio_read(
        image: rbd_image_t,
        off: u64,
        len: usize,
        buf: *mut c_char,
        c: rbd_completion_t,
    ) -> c_int;
    pub(crate) fn rbd_aio_write2(
        image: rbd_image_t,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: rbd_completion_t,
        op_flags: c_int,
    ) -> c_int;
    pub(crate) fn rbd_aio_flush(image: rbd_image_t, c: rbd_completion_t) -> c_int;
    pub(crate) fn rbd_aio_discard(
        image: rbd_image_t,
        off: u64,
        len: u64,
        c: rbd_completion_t,
    ) -> c_int;
    pub(crate) fn rbd_aio_write_zeroes(
        image: rbd_image_t,
        off: u64,
        len: usize,
        c: rbd_completion_t,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    pub(crate) fn rbd_aio_compare_and_write(
        image: rbd_image_t,
        off: u64,
        len: usize,
        cmp_buf: *const c_char,
        buf: *const c_char,
        c: rbd_completion_t,
        mismatch_off: *mut u64,
        op_flags: c_int,
    ) -> isize;
    pub(crate) fn rbd_aio_writesame(
        image: rbd_image_t,
        off: u64,
        len: usize,
        buf: *const c_char,
        data_len: usize,
        c: rbd_completion_t,
        op_flags: c_int,
    ) -> c_int;
    pub(crate) fn rbd_diff_iterate2(
        image: rbd_image_t,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: rbd_diff_cb_t,
        arg: *mut c_void,
    ) -> c_int;
}
