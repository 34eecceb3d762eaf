//! Per-logical-unit configuration ([`LuConfig`]), const-constructible with a builder API.

/// Block sizes a logical unit may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockSize {
    /// 512-byte logical blocks.
    B512,
    /// 4096-byte logical blocks.
    B4096,
}

impl BlockSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u32 {
        match self {
            BlockSize::B512 => 512,
            BlockSize::B4096 => 4096,
        }
    }
}

/// A fixed-length, space-padded ASCII identification field (INQUIRY vendor, product, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AsciiField<const N: usize>(pub [u8; N]);

impl<const N: usize> AsciiField<N> {
    /// Copy `s` (truncated to `N` bytes, non-printable bytes replaced by `_`), pad with spaces.
    pub const fn new(s: &str) -> Self {
        let b = s.as_bytes();
        let mut out = [b' '; N];
        let mut i = 0;
        while i < N && i < b.len() {
            let c = b[i];
            out[i] = if c >= 0x20 && c <= 0x7E { c } else { b'_' };
            i += 1;
        }
        AsciiField(out)
    }
    /// The padded bytes.
    pub const fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }
    /// The bytes without trailing spaces.
    pub fn trimmed(&self) -> &[u8] {
        let mut end = N;
        while end > 0 && self.0[end - 1] == b' ' {
            end -= 1;
        }
        &self.0[..end]
    }
}

/// Configuration of one emulated SBC disk.
///
/// ```
/// use scsi_core::{BlockSize, LuConfig};
/// const CFG: LuConfig = LuConfig::new(2048)
///     .block_size(BlockSize::B4096)
///     .thin(true)
///     .serial("SN0001")
///     .naa(0x5001_4050_0000_0001);
/// assert_eq!(CFG.block_bytes(), 4096);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LuConfig {
    /// Logical block size.
    pub block_size: BlockSize,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// The medium is write protected.
    pub read_only: bool,
    /// The medium is removable (RMB; START STOP UNIT can eject and load it).
    pub removable: bool,
    /// Thin provisioned (LBPME: UNMAP, WRITE SAME with UNMAP, GET LBA STATUS).
    pub thin: bool,
    /// Unmapped blocks read as zeros (LBPRZ); only meaningful with `thin`.
    pub lbprz: bool,
    /// Write cache enabled at power on (caching mode page WCE).
    pub write_cache: bool,
    /// T10 vendor identification.
    pub vendor: AsciiField<8>,
    /// Product identification.
    pub product: AsciiField<16>,
    /// Product revision level.
    pub revision: AsciiField<4>,
    /// Unit serial number (VPD 0x80), up to 32 characters.
    pub serial: AsciiField<32>,
    /// 8-byte NAA IEEE Registered identifier (NAA 5: top nibble 5, then the 24-bit OUI) for
    /// VPD 0x83.
    pub naa: u64,
    /// Relative target port identifier reported in VPD 0x83.
    pub relative_port: u16,
    /// Target port group reported in VPD 0x83.
    pub port_group: u16,
    /// log2(logical blocks per physical block).
    pub physical_block_exponent: u8,
    /// Optimal transfer length in blocks (VPD 0xB0), 0 = not reported.
    pub optimal_transfer_blocks: u32,
    /// Maximum transfer length in blocks for READ/WRITE/VERIFY/... (VPD 0xB0).
    pub max_transfer_blocks: u32,
    /// Maximum UNMAP LBA count (VPD 0xB0).
    pub max_unmap_lba_count: u32,
    /// Maximum UNMAP block descriptor count (VPD 0xB0).
    pub max_unmap_descriptors: u32,
    /// Maximum WRITE SAME length in blocks (VPD 0xB0), 0 = no limit.
    pub max_write_same_blocks: u64,
}

impl LuConfig {
    /// Defaults: 512-byte blocks, writable, fixed medium, fully provisioned, write cache on,
    /// vendor "TGT-RS", product "VIRTUAL-DISK", revision "0001".
    pub const fn new(num_blocks: u64) -> LuConfig {
        LuConfig {
            block_size: BlockSize::B512,
            num_blocks,
            read_only: false,
            removable: false,
            thin: false,
            lbprz: true,
            write_cache: true,
            vendor: AsciiField::new("TGT-RS"),
            product: AsciiField::new("VIRTUAL-DISK"),
            revision: AsciiField::new("0001"),
            serial: AsciiField::new("0"),
            naa: 0x5001_4050_0000_0000,
            relative_port: 1,
            port_group: 1,
            physical_block_exponent: 0,
            optimal_transfer_blocks: 128,
            max_transfer_blocks: 16384,
            max_unmap_lba_count: 0x10_0000,
            max_unmap_descriptors: 256,
            max_write_same_blocks: 0x40_0000,
        }
    }
    /// Set the block size.
    pub const fn block_size(mut self, b: BlockSize) -> Self {
        self.block_size = b;
        self
    }
    /// Set the number of blocks.
    pub const fn num_blocks(mut self, n: u64) -> Self {
        self.num_blocks = n;
        self
    }
    /// Write protect the medium.
    pub const fn read_only(mut self, v: bool) -> Self {
        self.read_only = v;
        self
    }
    /// Make the medium removable.
    pub const fn removable(mut self, v: bool) -> Self {
        self.removable = v;
        self
    }
    /// Thin provisioning (logical block provisioning management).
    pub const fn thin(mut self, v: bool) -> Self {
        self.thin = v;
        self
    }
    /// Unmapped blocks read as zero.
    pub const fn lbprz(mut self, v: bool) -> Self {
        self.lbprz = v;
        self
    }
    /// Write cache enabled at power on.
    pub const fn write_cache(mut self, v: bool) -> Self {
        self.write_cache = v;
        self
    }
    /// Vendor identification (8 characters max).
    pub const fn vendor(mut self, s: &str) -> Self {
        self.vendor = AsciiField::new(s);
        self
    }
    /// Product identification (16 characters max).
    pub const fn product(mut self, s: &str) -> Self {
        self.product = AsciiField::new(s);
        self
    }
    /// Product revision (4 characters max).
    pub const fn revision(mut self, s: &str) -> Self {
        self.revision = AsciiField::new(s);
        self
    }
    /// Unit serial number (32 characters max).
    pub const fn serial(mut self, s: &str) -> Self {
        self.serial = AsciiField::new(s);
        self
    }
    /// NAA identifier.
    pub const fn naa(mut self, v: u64) -> Self {
        self.naa = v;
        self
    }
    /// Relative target port and target port group.
    pub const fn port(mut self, relative_port: u16, port_group: u16) -> Self {
        self.relative_port = relative_port;
        self.port_group = port_group;
        self
    }
    /// log2(logical blocks per physical block).
    pub const fn physical_block_exponent(mut self, e: u8) -> Self {
        self.physical_block_exponent = e;
        self
    }
    /// Optimal and maximum transfer lengths in blocks.
    pub const fn transfer_lengths(mut self, optimal: u32, max: u32) -> Self {
        self.optimal_transfer_blocks = optimal;
        self.max_transfer_blocks = max;
        self
    }
    /// UNMAP limits.
    pub const fn unmap_limits(mut self, max_lba_count: u32, max_descriptors: u32) -> Self {
        self.max_unmap_lba_count = max_lba_count;
        self.max_unmap_descriptors = max_descriptors;
        self
    }
    /// WRITE SAME limit in blocks.
    pub const fn max_write_same(mut self, blocks: u64) -> Self {
        self.max_write_same_blocks = blocks;
        self
    }
    /// Block size in bytes.
    pub const fn block_bytes(&self) -> u32 {
        self.block_size.bytes()
    }
}
