//! A read-only ext4 reader for `rampart verify`: lists every entry of a file
//! system held in a file at a byte offset, with its metadata, xattrs and
//! content digest. The image is hostile: every offset is bounds-checked,
//! every walk and what it holds bounded, odd names refused, and so is what
//! the booted kernel would read otherwise (an entry's type byte, a hash-tree
//! index); this module never writes or runs anything, and never turns a
//! name from the image into a host path.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::tree::Kind;

const SUPERBLOCK_OFFSET: u64 = 1024;
const MAGIC: u16 = 0xEF53;
const ROOT_INODE: u32 = 2;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
/// Incompatible features this reader reads correctly; any other is refused.
const UNDERSTOOD_INCOMPAT: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA;
const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const COMPAT_DIR_INDEX: u32 = 0x20;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const RO_COMPAT_QUOTA: u32 = 0x100;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const RO_COMPAT_READONLY: u32 = 0x1000;
const RO_COMPAT_PROJECT: u32 = 0x2000;
/// Read-only-compatible features this reader reads correctly (Debian 12's
/// mke2fs sets sparse_super, large_file, huge_file, dir_nlink, extra_isize
/// and metadata_csum); any other may change what the kernel reads, and is refused.
const UNDERSTOOD_RO_COMPAT: u32 = RO_COMPAT_SPARSE_SUPER
    | RO_COMPAT_LARGE_FILE
    | RO_COMPAT_HUGE_FILE
    | RO_COMPAT_GDT_CSUM
    | RO_COMPAT_DIR_NLINK
    | RO_COMPAT_EXTRA_ISIZE
    | RO_COMPAT_QUOTA
    | RO_COMPAT_METADATA_CSUM
    | RO_COMPAT_READONLY
    | RO_COMPAT_PROJECT;
const RO_COMPAT_NAMES: &[(u32, &str)] = &[
    (0x4, "btree_dir"),
    (0x200, "bigalloc"),
    (0x800, "replica"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];

const GROUP_INODE_UNINIT: u16 = 0x1;
const SUPER_FLAG_SIGNED_HASH: u32 = 0x1;
const SUPER_FLAG_UNSIGNED_HASH: u32 = 0x2;

const FLAG_INDEX: u32 = 0x1000;
const FLAG_HUGE_FILE: u32 = 0x40000;
const FLAG_EXTENTS: u32 = 0x80000;
const FLAG_EA_INODE: u32 = 0x200000;
const FLAG_INLINE_DATA: u32 = 0x10000000;
const FLAG_ENCRYPT: u32 = 0x800;

const EXTENT_MAGIC: u16 = 0xF30A;
const XATTR_MAGIC: u32 = 0xEA02_0000;

/// The kernel's own limit on extent tree depth.
const MAX_EXTENT_DEPTH: u16 = 5;
/// Logical blocks of a file are 32-bit.
const LOGICAL_BLOCKS_END: u64 = 1 << 32;
/// Levels of a hash-tree index the kernel reads, the root's included (with
/// largedir one more): a root's indirect_levels must be below this.
const MAX_HASH_TREE_LEVELS: u8 = 2;
/// The kernel reads only the low 28 bits of a hash-tree entry's block.
const HASH_TREE_BLOCK_MASK: u32 = 0x0FFF_FFFF;
/// Directory nesting, path length and entry count a real root never reaches.
const MAX_DIRECTORY_DEPTH: usize = 256;
const MAX_PATH_BYTES: usize = 4096;
const MAX_ENTRIES: usize = 4_000_000;
const MAX_DIRECTORY_BYTES: u64 = 256 << 20;
const MAX_SYMLINK_BYTES: u64 = 4096;
/// Holes are hashed as zeros; a file system claiming more is refused, not hashed for hours.
const MAX_HOLE_BYTES: u64 = 64 << 30;
/// More groups than a 128 TiB file system has, and a descriptor table larger than any real one.
const MAX_GROUPS: u64 = 1 << 20;
const MAX_DESCRIPTOR_TABLE_BYTES: u64 = 64 << 20;
/// Content is read in chunks of this many bytes (a multiple of any block size).
const CHUNK_BYTES: usize = 1 << 20;
/// Bytes of names, paths, symlink targets and xattrs the listing may hold
/// (every entry counted as its caller holds it): a real root needs a few MiB.
const MAX_HELD_BYTES: u64 = 1 << 30;

/// Extended attributes by full name, as `Entry::xattrs` holds them.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry of the file system, as `verify` compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path as the image spells it, bytes, starting with '/'.
    pub path: Vec<u8>,
    pub inode: u32,
    pub kind: Kind,
    /// Permission and set-id bits (mode & 07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// A symlink's target; empty otherwise.
    pub target: Vec<u8>,
    /// A device node's (major, minor).
    pub device: (u32, u32),
    /// Extended attributes by full name ("security.capability"), values as
    /// `lgetxattr` returns them (POSIX ACLs in their xattr form); shared by
    /// the hard links of one inode.
    pub xattrs: Arc<Xattrs>,
}

struct Group {
    inode_table: u64,
    /// Inodes at the start of the table that are initialised; the rest may be garbage.
    usable_inodes: u32,
}

/// An ext4 file system in `file` at bytes `start..start + length`.
pub struct FileSystem<'a> {
    file: &'a File,
    start: u64,
    length: u64,
    block_size: u64,
    blocks_count: u64,
    inode_size: u64,
    inodes_per_group: u32,
    inodes_count: u32,
    first_inode: u32,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    groups: Vec<Group>,
    /// Bytes of blocks still to be read: inodes of a sound file system
    /// share no blocks, so all content fits in the partition once (hard
    /// links are read once, by `Digests`). Stops extents shared between
    /// files from making verify read the same blocks for ever.
    data_budget: Cell<u64>,
    /// Bytes of holes still to be hashed as zeros, over all files.
    hole_budget: Cell<u64>,
    /// With metadata_csum: the seed of every checksum (from the UUID, or stored).
    checksum_seed: Option<u32>,
    /// The directory hash's seed, and whether it reads names as unsigned
    /// bytes (None: the superblock leaves it to the booting architecture).
    hash_seed: [u32; 4],
    hash_unsigned: Option<bool>,
    /// Bytes the listing may still hold (`MAX_HELD_BYTES` in all).
    held_budget: Cell<u64>,
    /// Parsed xattr blocks by block number: a block shared by many inodes is read once.
    xattr_blocks: RefCell<HashMap<u64, Arc<Xattrs>>>,
    /// What the hard links of an inode share (xattrs, symlink target), read once.
    linked_inodes: RefCell<HashMap<u32, LinkedInode>>,
}

/// What the hard links of one inode share.
#[derive(Clone)]
struct LinkedInode {
    xattrs: Arc<Xattrs>,
    target: Vec<u8>,
}

struct Inode {
    number: u32,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    links: u16,
    flags: u32,
    /// i_blocks in 512-byte units.
    sectors: u64,
    block: [u8; 60],
    file_acl: u64,
    raw: Vec<u8>,
    /// Where the in-inode xattr area starts in `raw` (0: none).
    ibody_xattrs: usize,
    /// With metadata_csum: the seed of this inode's blocks' checksums.
    checksum_seed: Option<u32>,
}

/// What an extent index entry says of the node it points at: its depth,
/// its first key, and the end (exclusive) of the blocks it may map.
#[derive(Debug, Clone, Copy)]
struct IndexKey {
    depth: u16,
    first: u64,
    end: u64,
}

/// One run of blocks of a file, from a leaf of its extent tree.
#[derive(Debug, Clone, Copy)]
struct Extent {
    logical: u64,
    length: u64,
    physical: u64,
    unwritten: bool,
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The names of the feature bits set in `unknown`, from `table` or in hex.
fn feature_names(unknown: u32, table: &[(u32, &str)]) -> Vec<String> {
    (0..32)
        .map(|bit| 1u32 << bit)
        .filter(|flag| unknown & flag != 0)
        .map(|flag| table.iter().find(|(f, _)| *f == flag).map_or(format!("{flag:#x}"), |(_, n)| n.to_string()))
        .collect()
}

/// A directory entry's file-type byte, for messages.
fn file_type_name(file_type: u8) -> &'static str {
    match file_type {
        0 => "unknown",
        1 => "regular file",
        2 => "directory",
        3 => "character device",
        4 => "block device",
        5 => "fifo",
        6 => "socket",
        7 => "symlink",
        _ => "invalid",
    }
}

/// A path for messages: the image's bytes, lossy.
fn shown(path: &[u8]) -> String {
    if path.is_empty() {
        "/".to_string()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

impl<'a> FileSystem<'a> {
    /// Reads and checks the superblock and the group descriptors; refuses a
    /// file system it could misread.
    pub fn open(file: &'a File, start: u64, length: u64) -> Result<FileSystem<'a>> {
        let mut fs = FileSystem {
            file,
            start,
            length,
            block_size: 1024,
            blocks_count: 0,
            inode_size: 128,
            inodes_per_group: 0,
            inodes_count: 0,
            first_inode: 11,
            compat: 0,
            incompat: 0,
            ro_compat: 0,
            groups: Vec::new(),
            data_budget: Cell::new(length),
            hole_budget: Cell::new(MAX_HOLE_BYTES),
            checksum_seed: None,
            hash_seed: [0; 4],
            hash_unsigned: None,
            held_budget: Cell::new(MAX_HELD_BYTES),
            xattr_blocks: RefCell::new(HashMap::new()),
            linked_inodes: RefCell::new(HashMap::new()),
        };
        let mut sb = [0u8; 1024];
        fs.read_at(SUPERBLOCK_OFFSET, &mut sb).context("while reading the ext4 superblock")?;
        if le16(&sb, 0x38) != MAGIC {
            bail!("no ext4 file system (bad superblock magic)");
        }
        let incompat = le32(&sb, 0x60);
        if incompat & INCOMPAT_RECOVER != 0 {
            bail!(
                "the file system needs recovery: its journal holds changes not yet written to it, which the kernel would apply at mount, so what verify reads is not what would boot"
            );
        }
        let ro_compat = le32(&sb, 0x64);
        let unknown = feature_names(incompat & !UNDERSTOOD_INCOMPAT, INCOMPAT_NAMES)
            .into_iter()
            .chain(feature_names(ro_compat & !UNDERSTOOD_RO_COMPAT, RO_COMPAT_NAMES))
            .collect::<Vec<String>>();
        if !unknown.is_empty() {
            bail!("the file system uses ext4 features verify does not read: {}", unknown.join(", "));
        }
        fs.compat = le32(&sb, 0x5C);
        fs.hash_seed = [le32(&sb, 0xEC), le32(&sb, 0xF0), le32(&sb, 0xF4), le32(&sb, 0xF8)];
        let flags = le32(&sb, 0x160);
        fs.hash_unsigned = if flags & SUPER_FLAG_UNSIGNED_HASH != 0 {
            Some(true)
        } else if flags & SUPER_FLAG_SIGNED_HASH != 0 {
            Some(false)
        } else {
            None
        };
        fs.incompat = incompat;
        fs.ro_compat = ro_compat;
        if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            if crc32c(!0, &sb[..0x3FC]) != le32(&sb, 0x3FC) {
                bail!("the superblock's checksum does not match (metadata_csum): it was changed without its checksum");
            }
            fs.checksum_seed = Some(if incompat & INCOMPAT_CSUM_SEED != 0 { le32(&sb, 0x270) } else { crc32c(!0, &sb[0x68..0x78]) });
        }
        let log_block_size = le32(&sb, 0x18);
        if log_block_size > 6 {
            bail!("the superblock's block size (2^{} KiB) is not one ext4 uses", log_block_size);
        }
        fs.block_size = 1024 << log_block_size;
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        fs.blocks_count = le32(&sb, 0x4) as u64 | if is_64bit { (le32(&sb, 0x150) as u64) << 32 } else { 0 };
        if fs.blocks_count.checked_mul(fs.block_size).is_none_or(|bytes| bytes > length) {
            bail!("the file system ({} blocks of {} bytes) is larger than its partition ({length} bytes)", fs.blocks_count, fs.block_size);
        }
        fs.inodes_count = le32(&sb, 0x0);
        fs.inodes_per_group = le32(&sb, 0x28);
        let blocks_per_group = le32(&sb, 0x20) as u64;
        let bits = fs.block_size * 8;
        if blocks_per_group == 0 || blocks_per_group > bits || fs.inodes_per_group == 0 || fs.inodes_per_group as u64 > bits {
            bail!("the superblock's group geometry is invalid");
        }
        if le32(&sb, 0x4C) >= 1 {
            fs.inode_size = le16(&sb, 0x58) as u64;
            fs.first_inode = le32(&sb, 0x54);
        }
        if fs.inode_size < 128 || fs.inode_size > fs.block_size || !fs.inode_size.is_power_of_two() {
            bail!("the superblock's inode size ({}) is invalid", fs.inode_size);
        }
        let first_data_block = le32(&sb, 0x14) as u64;
        if first_data_block >= fs.blocks_count {
            bail!("the superblock's first data block is past the end of the file system");
        }
        let n_groups = (fs.blocks_count - first_data_block).div_ceil(blocks_per_group);
        if fs.inodes_count as u64 > n_groups * fs.inodes_per_group as u64 {
            bail!("the superblock counts more inodes than its groups hold");
        }
        let descriptor_size = if is_64bit { le16(&sb, 0xFE) as u64 } else { 32 };
        if !(32..=1024).contains(&descriptor_size) || !descriptor_size.is_power_of_two() {
            bail!("the superblock's group descriptor size ({descriptor_size}) is invalid");
        }
        if n_groups > MAX_GROUPS || n_groups * descriptor_size > MAX_DESCRIPTOR_TABLE_BYTES {
            bail!("the superblock claims {n_groups} block groups, more than verify reads");
        }
        let checksummed = ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
        let mut table = vec![0u8; (n_groups * descriptor_size) as usize];
        fs.read_at((first_data_block + 1) * fs.block_size, &mut table).context("while reading the group descriptors")?;
        for (group, descriptor) in table.chunks_exact(descriptor_size as usize).enumerate() {
            if let Some(seed) = fs.checksum_seed {
                let mut zeroed = descriptor.to_vec();
                zeroed[0x1E..0x20].fill(0);
                let sum = crc32c(crc32c(seed, &(group as u32).to_le_bytes()), &zeroed) & 0xFFFF;
                if sum != le16(descriptor, 0x1E) as u32 {
                    bail!("group {group}'s descriptor checksum does not match (metadata_csum)");
                }
            }
            let wide = descriptor_size >= 64;
            let inode_table = le32(descriptor, 0x8) as u64 | if wide { (le32(descriptor, 0x28) as u64) << 32 } else { 0 };
            let flags = le16(descriptor, 0x12);
            let unused = le16(descriptor, 0x1C) as u32 | if wide { (le16(descriptor, 0x32) as u32) << 16 } else { 0 };
            let usable_inodes = if !checksummed {
                fs.inodes_per_group
            } else if flags & GROUP_INODE_UNINIT != 0 {
                0
            } else {
                fs.inodes_per_group.saturating_sub(unused)
            };
            let table_blocks = (fs.inodes_per_group as u64 * fs.inode_size).div_ceil(fs.block_size);
            if inode_table.checked_add(table_blocks).is_none_or(|end| end > fs.blocks_count) {
                bail!("group {group}'s inode table lies outside the file system");
            }
            fs.groups.push(Group { inode_table, usable_inodes });
        }
        Ok(fs)
    }

    /// Reads `buffer.len()` bytes at `position` inside the file system, refusing any outside it.
    fn read_at(&self, position: u64, buffer: &mut [u8]) -> Result<()> {
        let end = position.checked_add(buffer.len() as u64);
        if end.is_none_or(|end| end > self.length) {
            bail!("a read at byte {position} reaches past the end of the partition");
        }
        self.file.read_exact_at(buffer, self.start + position).with_context(|| format!("while reading byte {position} of the file system"))
    }

    /// Reads `buffer.len() / block_size` blocks from block `first`, charged
    /// to the data budget (content, directories and extent tree nodes).
    fn read_blocks(&self, first: u64, buffer: &mut [u8]) -> Result<()> {
        let count = buffer.len() as u64 / self.block_size;
        if first.checked_add(count).is_none_or(|end| end > self.blocks_count) {
            bail!("block {first} (+{count}) is past the end of the file system");
        }
        let Some(left) = self.data_budget.get().checked_sub(buffer.len() as u64) else {
            bail!("the files' blocks add up to more than the partition holds (blocks shared between inodes)");
        };
        self.data_budget.set(left);
        self.read_at(first * self.block_size, buffer)
    }


    fn inode(&self, number: u32) -> Result<Inode> {
        if number == 0 || number > self.inodes_count {
            bail!("inode {number} does not exist (the file system has {})", self.inodes_count);
        }
        let group = ((number - 1) / self.inodes_per_group) as usize;
        let index = (number - 1) % self.inodes_per_group;
        let Some(descriptor) = self.groups.get(group) else { bail!("inode {number} is in group {group}, which does not exist") };
        if index >= descriptor.usable_inodes {
            bail!("inode {number} lies in the uninitialised part of group {group}'s inode table");
        }
        let mut raw = vec![0u8; self.inode_size as usize];
        self.read_at(descriptor.inode_table * self.block_size + index as u64 * self.inode_size, &mut raw)
            .with_context(|| format!("while reading inode {number}"))?;
        let mut ibody_xattrs = 0;
        if self.inode_size > 128 {
            let extra = le16(&raw, 0x80) as usize;
            if !extra.is_multiple_of(4) || 128 + extra > raw.len() {
                bail!("inode {number} has an invalid extra size ({extra})");
            }
            if 128 + extra + 4 <= raw.len() && le32(&raw, 128 + extra) == XATTR_MAGIC {
                ibody_xattrs = 128 + extra;
            }
        }
        let checksum_seed = match self.checksum_seed {
            Some(seed) => Some(self.check_inode_checksum(number, seed, &raw)?),
            None => None,
        };
        let flags = le32(&raw, 0x20);
        // As the kernel reads i_blocks: the high half and the unit flag only with huge_file.
        let mut sectors = le32(&raw, 0x1C) as u64;
        if self.ro_compat & RO_COMPAT_HUGE_FILE != 0 {
            sectors |= (le16(&raw, 0x74) as u64) << 32;
            if flags & FLAG_HUGE_FILE != 0 {
                sectors *= self.block_size / 512;
            }
        }
        let mut block = [0u8; 60];
        block.copy_from_slice(&raw[0x28..0x64]);
        Ok(Inode {
            number,
            mode: le16(&raw, 0x0),
            uid: le16(&raw, 0x2) as u32 | (le16(&raw, 0x78) as u32) << 16,
            gid: le16(&raw, 0x18) as u32 | (le16(&raw, 0x7A) as u32) << 16,
            size: le32(&raw, 0x4) as u64 | (le32(&raw, 0x6C) as u64) << 32,
            links: le16(&raw, 0x1A),
            flags,
            sectors,
            block,
            file_acl: le32(&raw, 0x68) as u64 | (le16(&raw, 0x76) as u64) << 32,
            raw,
            ibody_xattrs,
            checksum_seed,
        })
    }

    /// Checks an inode's checksum; returns the seed of its blocks' checksums.
    fn check_inode_checksum(&self, number: u32, seed: u32, raw: &[u8]) -> Result<u32> {
        let inode_seed = crc32c(crc32c(seed, &number.to_le_bytes()), &raw[0x64..0x68]);
        let mut zeroed = raw.to_vec();
        zeroed[0x7C..0x7E].fill(0);
        // The high half exists when the extra fields reach it.
        let has_high = raw.len() > 128 && le16(raw, 0x80) >= 4;
        if has_high {
            zeroed[0x82..0x84].fill(0);
        }
        let sum = crc32c(inode_seed, &zeroed);
        let stored = le16(raw, 0x7C) as u32 | if has_high { (le16(raw, 0x82) as u32) << 16 } else { 0 };
        let computed = if has_high { sum } else { sum & 0xFFFF };
        if stored != computed {
            bail!("inode {number}'s checksum does not match (metadata_csum): it was changed without its checksum");
        }
        Ok(inode_seed)
    }

    /// The directory hash's seed as mkfs was given it (`hash_seed=UUID`): it
    /// stays with the file system when its UUID is changed, so it tells
    /// which image an installed disk came from.
    pub fn hash_seed(&self) -> String {
        let bytes: Vec<u8> = self.hash_seed.iter().flat_map(|word| word.to_le_bytes()).collect();
        let h = hex::encode(bytes);
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }

    /// Every entry, the root first and then sorted by path bytes.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let root = self.inode(ROOT_INODE)?;
        let mut entries = vec![self.entry(Vec::new(), &root)?];
        if entries[0].kind != Kind::Dir {
            bail!("the root inode is not a directory");
        }
        entries[0].path = b"/".to_vec();
        let mut visited: HashSet<u32> = HashSet::from([ROOT_INODE]);
        // Directories still to list, by number (an inode can be as large as a block).
        let mut stack: Vec<(u32, Vec<u8>, usize)> = vec![(ROOT_INODE, Vec::new(), 0)];
        while let Some((directory_number, path, depth)) = stack.pop() {
            let directory = self.inode(directory_number).with_context(|| format!("while reading {}", shown(&path)))?;
            for (name, number, file_type) in self.directory(&directory, &path)? {
                let mut child_path = Vec::with_capacity(path.len() + 1 + name.len());
                child_path.extend_from_slice(&path);
                child_path.push(b'/');
                child_path.extend_from_slice(&name);
                if child_path.len() > MAX_PATH_BYTES {
                    bail!("a path below {} is longer than {MAX_PATH_BYTES} bytes", shown(&path));
                }
                let inode = self.inode(number).with_context(|| format!("while reading {}", shown(&child_path)))?;
                let entry = self.entry(child_path.clone(), &inode)?;
                // The kernel hands the entry's type to readdir unchecked (d_type),
                // and systemd skips a unit whose d_type is not a file or symlink.
                let expected = self.directory_entry_type(entry.kind);
                if file_type != expected {
                    bail!(
                        "inode {number} at {}: its directory entry's file type is {file_type} ({}), but the inode's mode makes it {expected} ({}); the booted system would see the entry's",
                        shown(&child_path),
                        file_type_name(file_type),
                        file_type_name(expected)
                    );
                }
                if entry.kind == Kind::Dir {
                    if !visited.insert(number) {
                        bail!("directory inode {number} at {} is reached twice (a directory loop or hard-linked directory)", shown(&child_path));
                    }
                    if depth + 1 > MAX_DIRECTORY_DEPTH {
                        bail!("{} is nested deeper than {MAX_DIRECTORY_DEPTH} directories", shown(&child_path));
                    }
                    stack.push((number, child_path, depth + 1));
                }
                entries.push(entry);
                if entries.len() > MAX_ENTRIES {
                    bail!("the file system has more than {MAX_ENTRIES} entries");
                }
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// The file-type byte a directory entry for `kind` must carry: the
    /// kind's code with the filetype feature, 0 without.
    fn directory_entry_type(&self, kind: Kind) -> u8 {
        if self.incompat & INCOMPAT_FILETYPE == 0 {
            return 0;
        }
        match kind {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::CharDevice => 3,
            Kind::BlockDevice => 4,
            Kind::Fifo => 5,
            Kind::Socket => 6,
            Kind::Symlink => 7,
        }
    }

    /// Takes `bytes` from what the listing may hold, refusing past `MAX_HELD_BYTES`.
    fn hold(&self, bytes: u64, what: &dyn Fn() -> String) -> Result<()> {
        let Some(left) = self.held_budget.get().checked_sub(bytes) else {
            bail!("{}: the listing's names, paths, targets and xattrs add up to more than {MAX_HELD_BYTES} bytes", what());
        };
        self.held_budget.set(left);
        Ok(())
    }

    fn entry(&self, path: Vec<u8>, inode: &Inode) -> Result<Entry> {
        let at = || format!("inode {} at {}", inode.number, shown(&path));
        if inode.links == 0 {
            bail!("{} is a deleted inode (no links)", at());
        }
        if inode.flags & (FLAG_ENCRYPT | FLAG_EA_INODE) != 0 {
            bail!("{} is encrypted or an xattr inode, which verify does not read", at());
        }
        let kind = match inode.mode & 0xF000 {
            0x8000 => Kind::File,
            0x4000 => Kind::Dir,
            0xA000 => Kind::Symlink,
            0x2000 => Kind::CharDevice,
            0x6000 => Kind::BlockDevice,
            0x1000 => Kind::Fifo,
            0xC000 => Kind::Socket,
            other => bail!("{} has an unknown file type ({other:#o})", at()),
        };
        // Hard links share what their inode holds, read once.
        let shared = self.linked_inodes.borrow().get(&inode.number).cloned();
        let LinkedInode { xattrs, target } = match shared {
            Some(shared) => shared,
            None => {
                let xattrs: Xattrs = self.xattrs(inode).with_context(at)?.into_iter().filter(|(name, _)| name != b"system.data").collect();
                let target = if kind == Kind::Symlink { self.symlink_target(inode).with_context(at)? } else { Vec::new() };
                let shared = LinkedInode { xattrs: Arc::new(xattrs), target };
                if inode.links > 1 && kind != Kind::Dir {
                    self.linked_inodes.borrow_mut().insert(inode.number, shared.clone());
                }
                shared
            }
        };
        // Counted for each link: the caller keeps a copy of each entry's.
        let xattr_bytes: usize = xattrs.iter().map(|(name, value)| name.len() + value.len() + 48).sum();
        let held = std::mem::size_of::<Entry>() + path.len() + target.len() + xattr_bytes;
        self.hold(held as u64, &at)?;
        let mut entry = Entry {
            path: Vec::new(),
            inode: inode.number,
            kind,
            mode: inode.mode as u32 & 0o7777,
            uid: inode.uid,
            gid: inode.gid,
            size: if kind == Kind::File { inode.size } else { 0 },
            target,
            device: (0, 0),
            xattrs,
        };
        match kind {
            Kind::CharDevice | Kind::BlockDevice => {
                let old = le32(&inode.block, 0);
                let new = le32(&inode.block, 4);
                entry.device = if old != 0 {
                    ((old >> 8) & 0xff, old & 0xff)
                } else {
                    ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
                };
            }
            _ => {}
        }
        entry.path = path;
        Ok(entry)
    }

    fn symlink_target(&self, inode: &Inode) -> Result<Vec<u8>> {
        if inode.size == 0 || inode.size > MAX_SYMLINK_BYTES {
            bail!("a symlink of {} bytes", inode.size);
        }
        let xattr_sectors = if inode.file_acl != 0 { self.block_size / 512 } else { 0 };
        // The kernel's rule: no data blocks and not inline means the target is in i_block.
        // (i_blocks - ea_blocks == 0, unsigned: fewer sectors than the xattr block is not fast.)
        let fast = inode.flags & FLAG_INLINE_DATA == 0 && inode.sectors == xattr_sectors;
        let target = if fast {
            if inode.size >= 60 {
                bail!("a fast symlink of {} bytes (at most 59 fit)", inode.size);
            }
            inode.block[..inode.size as usize].to_vec()
        } else {
            let mut target = Vec::new();
            self.read_data(inode, &mut |chunk| {
                target.extend_from_slice(chunk);
                Ok(())
            })?;
            target
        };
        if target.contains(&0) {
            bail!("a symlink target with a NUL byte");
        }
        Ok(target)
    }

    /// The sha256 of a regular file's content (holes read as zeros).
    pub fn sha256(&self, entry: &Entry) -> Result<[u8; 32]> {
        let inode = self.inode(entry.inode)?;
        let mut hasher = Sha256::new();
        self.read_data(&inode, &mut |chunk| {
            hasher.update(chunk);
            Ok(())
        })
        .with_context(|| format!("while reading inode {} at {}", entry.inode, shown(&entry.path)))?;
        Ok(hasher.finalize().into())
    }

    /// Streams exactly `inode.size` bytes of content into `sink`, in chunks
    /// that are whole blocks except the last.
    fn read_data(&self, inode: &Inode, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if inode.flags & FLAG_INLINE_DATA != 0 {
            let data = self.inline_data(inode)?;
            if (data.len() as u64) < inode.size {
                bail!("inline data of {} bytes for a size of {}", data.len(), inode.size);
            }
            return sink(&data[..inode.size as usize]);
        }
        if inode.flags & FLAG_EXTENTS == 0 {
            if inode.size == 0 {
                return Ok(());
            }
            bail!("the file uses block maps instead of extents, which verify does not read");
        }
        let total_blocks = inode.size.div_ceil(self.block_size);
        let mut remaining = inode.size;
        let mut next_block = 0u64;
        let zeros = vec![0u8; CHUNK_BYTES];
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let blocks_per_chunk = CHUNK_BYTES as u64 / self.block_size;
        let emit_zeros = |blocks: u64, remaining: &mut u64, sink: &mut dyn FnMut(&[u8]) -> Result<()>| -> Result<()> {
            let mut bytes = blocks.saturating_mul(self.block_size).min(*remaining);
            let Some(left) = self.hole_budget.get().checked_sub(bytes) else {
                bail!("the files have more than {MAX_HOLE_BYTES} bytes of holes in all");
            };
            self.hole_budget.set(left);
            while bytes > 0 {
                let n = bytes.min(CHUNK_BYTES as u64);
                sink(&zeros[..n as usize])?;
                bytes -= n;
                *remaining -= n;
            }
            Ok(())
        };
        let mut on_extent = |extent: Extent| -> Result<()> {
            if extent.logical >= total_blocks {
                return Ok(());
            }
            emit_zeros(extent.logical - next_block, &mut remaining, sink)?;
            let end = (extent.logical + extent.length).min(total_blocks);
            if extent.unwritten {
                emit_zeros(end - extent.logical, &mut remaining, sink)?;
            } else {
                let mut block = extent.logical;
                while block < end {
                    let count = (end - block).min(blocks_per_chunk);
                    let bytes = (count * self.block_size) as usize;
                    self.read_blocks(extent.physical + (block - extent.logical), &mut buffer[..bytes])?;
                    let n = (bytes as u64).min(remaining) as usize;
                    sink(&buffer[..n])?;
                    remaining -= n as u64;
                    block += count;
                }
            }
            next_block = end;
            Ok(())
        };
        let mut next_logical = 0u64;
        self.walk_extents(inode, &inode.block, None, &mut next_logical, &mut on_extent)?;
        emit_zeros(total_blocks - next_block, &mut remaining, sink)?;
        debug_assert_eq!(remaining, 0);
        Ok(())
    }

    /// Calls `on_extent` for each leaf extent in logical order; refuses a
    /// tree deeper than the kernel allows, nodes outside the file system,
    /// extents out of order or overlapping (which also stops a node being
    /// visited twice), and, as the kernel does, a node whose keys are not
    /// its index entry's: its first key must be the entry's, and all it
    /// maps must lie below the next entry's.
    fn walk_extents(
        &self,
        inode: &Inode,
        node: &[u8],
        child_of: Option<IndexKey>,
        next_logical: &mut u64,
        on_extent: &mut dyn FnMut(Extent) -> Result<()>,
    ) -> Result<()> {
        let number = inode.number;
        let expected_depth = child_of.map(|key| key.depth);
        let (low, end) = child_of.map_or((0, LOGICAL_BLOCKS_END), |key| (key.first, key.end));
        if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
            bail!("inode {number} has a damaged extent tree (bad node header)");
        }
        let entries = le16(node, 2) as usize;
        let max = le16(node, 4) as usize;
        let depth = le16(node, 6);
        if entries > max || 12 + 12 * max > node.len() || depth > MAX_EXTENT_DEPTH || expected_depth.is_some_and(|d| d != depth) {
            bail!("inode {number} has a damaged extent tree (node of {entries}/{max} entries at depth {depth})");
        }
        if expected_depth.is_some() && entries == 0 {
            bail!("inode {number} has a damaged extent tree (an empty node below the root)");
        }
        if let (Some(seed), Some(_)) = (inode.checksum_seed, expected_depth) {
            let tail = 12 + 12 * max;
            if tail + 4 > node.len() || crc32c(seed, &node[..tail]) != le32(node, tail) {
                bail!("inode {number}'s extent tree block checksum does not match (metadata_csum)");
            }
        }
        if child_of.is_some() && le32(node, 12) as u64 != low {
            bail!("inode {number} has a damaged extent tree (a node's first block {} is not its index entry's {low})", le32(node, 12));
        }
        for i in 0..entries {
            let at = 12 + 12 * i;
            let logical = le32(node, at) as u64;
            if depth == 0 {
                let raw_length = le16(node, at + 4) as u64;
                let (length, unwritten) = if raw_length > 32768 { (raw_length - 32768, true) } else { (raw_length, false) };
                let physical = (le16(node, at + 6) as u64) << 32 | le32(node, at + 8) as u64;
                if length == 0 || logical < *next_logical {
                    bail!("inode {number} has a damaged extent tree (extents empty, out of order or overlapping at block {logical})");
                }
                if logical < low || logical + length > end {
                    bail!("inode {number} has a damaged extent tree (extent at block {logical}+{length} outside its index entry's blocks {low}..{end})");
                }
                if physical.checked_add(length).is_none_or(|end| end > self.blocks_count) || physical == 0 {
                    bail!("inode {number} has an extent pointing past the end of the file system (block {physical}+{length})");
                }
                *next_logical = logical + length;
                on_extent(Extent { logical, length, physical, unwritten })?;
            } else {
                let next_key = if i + 1 < entries { le32(node, at + 12) as u64 } else { end };
                if logical < *next_logical || logical < low || next_key <= logical || next_key > end {
                    bail!("inode {number} has a damaged extent tree (index out of order or outside its parent's blocks at block {logical})");
                }
                let child = (le16(node, at + 8) as u64) << 32 | le32(node, at + 4) as u64;
                let mut block = vec![0u8; self.block_size as usize];
                self.read_blocks(child, &mut block).with_context(|| format!("while reading inode {number}'s extent tree"))?;
                let key = IndexKey { depth: depth - 1, first: logical, end: next_key };
                self.walk_extents(inode, &block, Some(key), next_logical, on_extent)?;
            }
        }
        Ok(())
    }

    /// The `(name, inode, file type)` of every entry but `.` and `..`,
    /// refusing names the kernel would not produce or that could leave a
    /// directory, and a hash-tree index that does not reach every entry.
    fn directory(&self, directory: &Inode, path: &[u8]) -> Result<Vec<(Vec<u8>, u32, u8)>> {
        let directory_type = self.directory_entry_type(Kind::Dir);
        let mut listing = Listing { fs: self, number: directory.number, path, position: 0, directory_type, entries: Vec::new() };
        let checksum_seed = directory.checksum_seed;
        // The kernel uses the index only with dir_index; without, it reads linearly too.
        let indexed = directory.flags & FLAG_INDEX != 0 && self.compat & COMPAT_DIR_INDEX != 0;
        if directory.flags & FLAG_INLINE_DATA != 0 {
            // i_block holds the parent's inode number, then entries; more in system.data.
            let data = self.inline_data(directory)?;
            if data.len() < 4 {
                bail!("directory inode {} at {} has no parent in its inline data", directory.number, shown(path));
            }
            listing.position = 2;
            listing.parse(&data[4..data.len().min(60)])?;
            if data.len() > 60 {
                listing.parse(&data[60..])?;
            }
            return listing.finish();
        }
        if directory.size > MAX_DIRECTORY_BYTES || !directory.size.is_multiple_of(self.block_size) || directory.size == 0 {
            bail!("directory inode {} at {} has an invalid size ({})", directory.number, shown(path), directory.size);
        }
        let block_size = self.block_size as usize;
        let at = || format!("directory inode {} at {}", directory.number, shown(path));
        // Of an indexed directory: copies of the blocks that may be index
        // blocks (the root, and those one empty entry spans), and the blocks
        // without a leaf's checksum, which must be index blocks.
        let mut index_candidates: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut without_checksum: Vec<u64> = Vec::new();
        // Of each block, where its entries are in `listing.entries`.
        let mut block_entries: Vec<(usize, usize)> = Vec::new();
        let mut logical = 0u64;
        self.read_data(directory, &mut |chunk| {
            for block in chunk.chunks(block_size) {
                // A leaf block ends in a 12-byte entry holding its checksum;
                // hash-tree index blocks keep theirs in their dx_tail.
                if let Some(seed) = checksum_seed {
                    let tail = block_size - 12;
                    let has_tail = le32(block, tail) == 0 && le16(block, tail + 4) == 12 && block[tail + 6] == 0 && block[tail + 7] == 0xDE;
                    if has_tail && crc32c(seed, &block[..tail]) != le32(block, tail + 8) {
                        bail!("{}: a block's checksum does not match (metadata_csum)", at());
                    }
                    if !has_tail && !indexed {
                        bail!("{}: a block without its checksum (metadata_csum)", at());
                    }
                    if !has_tail {
                        without_checksum.push(logical);
                    }
                }
                if indexed && (logical == 0 || (le32(block, 0) == 0 && le16(block, 4) as usize == block_size)) {
                    self.hold(block_size as u64, &at)?;
                    index_candidates.insert(logical, block.to_vec());
                }
                let first = listing.entries.len();
                listing.parse(block)?;
                if indexed {
                    block_entries.push((first, listing.entries.len()));
                }
                logical += 1;
            }
            Ok(())
        })?;
        if listing.position < 2 {
            bail!("directory inode {} at {} has no . and .. entries", directory.number, shown(path));
        }
        if indexed {
            let leaves = Leaves { names: &listing.entries, of_block: &block_entries };
            let index = HashIndex::check(self, directory, path, logical, &index_candidates, leaves)?;
            if let Some(block) = without_checksum.iter().find(|block| !index.contains(*block)) {
                bail!("{}: leaf block {block} is without its checksum (metadata_csum)", at());
            }
        }
        listing.finish()
    }

    /// The content of an inline-data inode: i_block, then the system.data xattr.
    fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>> {
        if self.incompat & INCOMPAT_INLINE_DATA == 0 {
            bail!("inode {} has inline data, which the file system does not enable", inode.number);
        }
        let mut data = inode.block.to_vec();
        let xattrs = self.ibody_xattrs(inode)?;
        if let Some((_, value)) = xattrs.iter().find(|(name, _)| name == b"system.data") {
            data.extend_from_slice(value);
        }
        Ok(data)
    }

    fn ibody_xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut xattrs = Vec::new();
        if inode.ibody_xattrs != 0 {
            // Value offsets count from the first entry, just after the magic.
            let area = &inode.raw[inode.ibody_xattrs + 4..];
            parse_xattr_entries(inode.number, area, 0, 0, &mut xattrs)?;
        }
        Ok(xattrs)
    }

    /// The xattrs of block `number` (for inode `inode`), read and parsed once
    /// however many inodes share it, so its reads are charged to the data budget.
    fn xattr_block(&self, inode: u32, number: u64) -> Result<Arc<Xattrs>> {
        if let Some(xattrs) = self.xattr_blocks.borrow().get(&number) {
            return Ok(xattrs.clone());
        }
        let mut block = vec![0u8; self.block_size as usize];
        self.read_blocks(number, &mut block).context("while reading the xattr block")?;
        if le32(&block, 0) != XATTR_MAGIC || le32(&block, 8) != 1 {
            bail!("the xattr block {number} is damaged (bad magic or block count)");
        }
        if let Some(seed) = self.checksum_seed {
            let stored = le32(&block, 0x10);
            block[0x10..0x14].fill(0);
            if crc32c(crc32c(seed, &number.to_le_bytes()), &block) != stored {
                bail!("the xattr block {number}'s checksum does not match (metadata_csum)");
            }
        }
        let mut xattrs = Vec::new();
        parse_xattr_entries(inode, &block, 32, 0, &mut xattrs)?;
        let xattrs = Arc::new(xattrs);
        self.xattr_blocks.borrow_mut().insert(number, xattrs.clone());
        Ok(xattrs)
    }

    /// In-inode and block xattrs, sorted by name, ACLs in their xattr form.
    fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut xattrs = self.ibody_xattrs(inode)?;
        if inode.file_acl != 0 {
            xattrs.extend(self.xattr_block(inode.number, inode.file_acl)?.iter().cloned());
        }
        let mut seen = BTreeSet::new();
        for (name, value) in &mut xattrs {
            if !seen.insert(name.clone()) {
                bail!("the xattr {} is set twice", String::from_utf8_lossy(name));
            }
            if name == b"system.posix_acl_access" || name == b"system.posix_acl_default" {
                *value = acl_to_xattr(value).with_context(|| format!("while reading the ACL {}", String::from_utf8_lossy(name)))?;
            }
        }
        xattrs.sort();
        Ok(xattrs)
    }
}

/// One directory being listed: the entries so far and the names seen.
struct Listing<'a, 'b> {
    fs: &'a FileSystem<'a>,
    number: u32,
    path: &'b [u8],
    /// Live entries seen so far: 0 must be ".", 1 "..".
    position: usize,
    /// The file type "." and ".." must carry.
    directory_type: u8,
    entries: Vec<(Vec<u8>, u32, u8)>,
}

impl Listing<'_, '_> {
    /// The entries, sorted by name, refusing a name given twice.
    fn finish(mut self) -> Result<Vec<(Vec<u8>, u32, u8)>> {
        self.entries.sort_unstable();
        if let Some(pair) = self.entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            bail!("directory inode {} at {} has two entries named {:?}", self.number, shown(self.path), String::from_utf8_lossy(&pair[0].0));
        }
        Ok(self.entries)
    }

    /// Parses one block (or inline area) of directory entries. Hash-tree
    /// index blocks hold one empty entry spanning the block, so a linear
    /// read sees every name once.
    fn parse(&mut self, area: &[u8]) -> Result<()> {
        let at = || format!("directory inode {} at {}", self.number, shown(self.path));
        let mut offset = 0;
        while offset < area.len() {
            if offset + 8 > area.len() {
                bail!("{} has a truncated entry at byte {offset} of a block", at());
            }
            let number = le32(area, offset);
            let record_length = le16(area, offset + 4) as usize;
            let name_length = area[offset + 6] as usize;
            if record_length < 8 || !record_length.is_multiple_of(4) || offset + record_length > area.len() || 8 + name_length > record_length {
                bail!("{} has a damaged entry at byte {offset} of a block (record length {record_length})", at());
            }
            let name = &area[offset + 8..offset + 8 + name_length];
            let file_type = area[offset + 7];
            offset += record_length;
            if number == 0 {
                continue;
            }
            let name_shown = String::from_utf8_lossy(name);
            let dot = name == b"." || name == b"..";
            match self.position {
                0 if name != b"." => bail!("{}: its first entry is {name_shown:?}, not \".\"", at()),
                1 if name != b".." => bail!("{}: its second entry is {name_shown:?}, not \"..\"", at()),
                0 | 1 if file_type != self.directory_type => bail!(
                    "{}: its {name_shown:?} entry has file type {file_type} ({}), not {} ({})",
                    at(),
                    file_type_name(file_type),
                    self.directory_type,
                    file_type_name(self.directory_type)
                ),
                0 | 1 => {}
                _ if dot => bail!("{} has a second {name_shown:?} entry (inode {number})", at()),
                _ if name.is_empty() => bail!("{} has an entry with an empty name (inode {number})", at()),
                _ if name.contains(&b'/') || name.contains(&0) => {
                    bail!("{} has an entry named {name_shown:?} (inode {number}): a name with '/' or NUL, refused", at())
                }
                _ if number != ROOT_INODE && number < self.fs.first_inode => {
                    bail!("{} has an entry {name_shown:?} naming reserved inode {number}", at())
                }
                _ => {
                    if self.entries.len() >= MAX_ENTRIES {
                        bail!("{} has more than {MAX_ENTRIES} entries", at());
                    }
                    self.entries.push((name.to_vec(), number, file_type));
                }
            }
            self.position += 1;
        }
        Ok(())
    }
}

/// The hash-tree index of a directory, checked as the kernel's lookups and
/// readdir walk it: the leaf blocks it reaches must be exactly the blocks
/// that are not index blocks, each once, or the booted system would not
/// see the entries verify read.
struct HashIndex<'a> {
    number: u32,
    path: &'a [u8],
    /// The directory's size in blocks.
    blocks: u64,
    candidates: &'a HashMap<u64, Vec<u8>>,
    leaves: Leaves<'a>,
    name_hash: NameHash,
    checksum_seed: Option<u32>,
    /// Blocks the index points at, index or leaf.
    reached: HashSet<u64>,
    /// The index blocks: the root and the interior nodes.
    index_blocks: HashSet<u64>,
}

impl<'a> HashIndex<'a> {
    /// Checks the index of `directory` (of `blocks` blocks, its possible
    /// index blocks in `candidates`); returns the index blocks.
    fn check(
        fs: &'a FileSystem<'a>,
        directory: &Inode,
        path: &'a [u8],
        blocks: u64,
        candidates: &'a HashMap<u64, Vec<u8>>,
        leaves: Leaves<'a>,
    ) -> Result<HashSet<u64>> {
        let mut index = HashIndex {
            number: directory.number,
            path,
            blocks,
            candidates,
            leaves,
            name_hash: NameHash { version: 0, seed: fs.hash_seed },
            checksum_seed: directory.checksum_seed,
            reached: HashSet::new(),
            index_blocks: HashSet::from([0]),
        };
        let at = index.at();
        let block_size = fs.block_size as usize;
        let Some(root) = candidates.get(&0) else { bail!("{at}: its hash-tree root is missing") };
        // dx_root: "." (12 bytes), ".." spanning the rest, then dx_root_info.
        if le16(root, 4) != 12 || le16(root, 16) as usize != block_size - 12 {
            bail!("{at}: its hash-tree root holds entries other than . and .. (the kernel would not read them)");
        }
        let (reserved, hash_version, info_length, levels, flags) = (le32(root, 24), root[28], root[29], root[30], root[31]);
        if reserved != 0 || info_length != 8 || hash_version > 2 || flags & 1 != 0 {
            bail!("{at}: its hash-tree root is damaged (hash version {hash_version}, info length {info_length}, flags {flags:#x})");
        }
        let Some(unsigned) = fs.hash_unsigned else {
            bail!("{at}: its hash-tree index depends on whether names hash as signed bytes, which the superblock leaves to the booting machine's architecture");
        };
        index.name_hash.version = hash_version + if unsigned { 3 } else { 0 };
        let max_levels = if fs.incompat & INCOMPAT_LARGEDIR != 0 { MAX_HASH_TREE_LEVELS + 1 } else { MAX_HASH_TREE_LEVELS };
        if levels >= max_levels {
            bail!("{at}: its hash tree has {levels} levels of index nodes, more than the kernel reads ({})", max_levels - 1);
        }
        index.check_node(0, root, 32, levels, 0, u32::MAX)?;
        if let Some(missed) = (1..blocks).find(|block| !index.reached.contains(block)) {
            bail!("{at}: its hash tree does not reach block {missed}, so the booted system would not see the entries there");
        }
        Ok(index.index_blocks)
    }

    fn at(&self) -> String {
        format!("directory inode {} at {}", self.number, shown(self.path))
    }

    /// Checks that every name in leaf block `logical` hashes into
    /// `low..high`, where the kernel's lookups for it go.
    fn check_leaf(&self, logical: u64, low: u32, high: u32) -> Result<()> {
        let (first, end) = self.leaves.of_block[logical as usize];
        for (name, number, _) in &self.leaves.names[first..end] {
            let hash = self.name_hash.hash(name);
            if hash < low || hash >= high {
                bail!(
                    "{}: the entry {:?} (inode {number}) is in leaf block {logical}, whose hashes are {low:#x}..{high:#x}, but its hash is {hash:#x}: the booted system's lookups would not find it",
                    self.at(),
                    String::from_utf8_lossy(name)
                );
            }
        }
        Ok(())
    }

    /// Checks the index block `logical` (its countlimit at `count_offset`,
    /// `levels_below` levels of nodes under it, its hashes in `low..=high`)
    /// and the nodes below it.
    fn check_node(&mut self, logical: u64, block: &[u8], count_offset: usize, levels_below: u8, low: u32, high: u32) -> Result<()> {
        let at = self.at();
        let block_size = block.len();
        let tail = if self.checksum_seed.is_some() { 8 } else { 0 };
        let limit = le16(block, count_offset) as usize;
        let count = le16(block, count_offset + 2) as usize;
        let expected_limit = (block_size - count_offset - tail) / 8;
        if limit != expected_limit || count == 0 || count > limit {
            bail!("{at}: hash-tree index block {logical} has {count} of {limit} entries (the block holds {expected_limit})");
        }
        if let Some(seed) = self.checksum_seed {
            // dx_tail after the limit's entries: reserved, then the checksum of the used entries and the reserved field.
            let tail_at = count_offset + limit * 8;
            let sum = crc32c(crc32c(crc32c(seed, &block[..count_offset + count * 8]), &block[tail_at..tail_at + 4]), &[0; 4]);
            if sum != le32(block, tail_at + 4) {
                bail!("{at}: hash-tree index block {logical}'s checksum does not match (metadata_csum)");
            }
        }
        // The entries: (hash, block); the first one's hash is implied, the low end of the block's range.
        let entries: Vec<(u32, u64)> = (0..count)
            .map(|i| {
                let entry = count_offset + 8 * i;
                (if i == 0 { low } else { le32(block, entry) }, (le32(block, entry + 4) & HASH_TREE_BLOCK_MASK) as u64)
            })
            .collect();
        if let Some(i) = (1..count).find(|&i| entries[i].0 < entries[i - 1].0 || entries[i].0 > high) {
            bail!("{at}: hash-tree index block {logical} has hashes out of order or outside its range (entry {i})");
        }
        for (i, &(hash, child)) in entries.iter().enumerate() {
            let next = entries.get(i + 1).map_or(high, |(hash, _)| *hash);
            if child == 0 || child >= self.blocks {
                bail!("{at}: its hash tree points at block {child}, outside the directory's {} blocks", self.blocks);
            }
            if !self.reached.insert(child) {
                bail!("{at}: its hash tree reaches block {child} twice");
            }
            if levels_below > 0 {
                let Some(node) = self.candidates.get(&child) else {
                    bail!("{at}: hash-tree block {child} is not an index node (one empty entry spanning the block)");
                };
                self.index_blocks.insert(child);
                self.check_node(child, node, 8, levels_below - 1, hash & !1, next)?;
            } else {
                self.check_leaf(child, hash & !1, next)?;
            }
        }
        Ok(())
    }
}

/// The entries of a directory, and of each block where they are among them.
#[derive(Clone, Copy)]
struct Leaves<'a> {
    names: &'a [(Vec<u8>, u32, u8)],
    of_block: &'a [(usize, usize)],
}

/// The kernel's hash of a directory entry's name (fs/ext4/hash.c), by
/// which its hash-tree index sends a lookup to one leaf block.
#[derive(Debug, Clone, Copy)]
struct NameHash {
    /// 0 legacy, 1 half_md4, 2 tea; 3 to 5 the same reading names as unsigned bytes.
    version: u8,
    seed: [u32; 4],
}

impl NameHash {
    fn hash(&self, name: &[u8]) -> u32 {
        let unsigned = self.version >= 3;
        let mut state = if self.seed.iter().any(|word| *word != 0) { self.seed } else { [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476] };
        let hash = match self.version % 3 {
            0 => legacy_name_hash(name, unsigned),
            1 => {
                for start in (0..name.len()).step_by(32) {
                    half_md4_transform(&mut state, &name_words::<8>(&name[start..], unsigned));
                }
                state[1]
            }
            _ => {
                for start in (0..name.len()).step_by(16) {
                    tea_transform(&mut state, &name_words::<4>(&name[start..], unsigned));
                }
                state[0]
            }
        } & !1;
        // The end-of-directory marker is never a name's hash.
        if hash == 0x7FFF_FFFF << 1 {
            (0x7FFF_FFFF - 1) << 1
        } else {
            hash
        }
    }
}

/// str2hashbuf: up to `N` words of `rest` (the name from here on), padded with its length.
fn name_words<const N: usize>(rest: &[u8], unsigned: bool) -> [u32; N] {
    let length = rest.len() as u32;
    let pad = (length | length << 8) | (length | length << 8) << 16;
    let mut words = [pad; N];
    let mut value = pad;
    let mut filled = 0;
    for (i, byte) in rest.iter().take(N * 4).enumerate() {
        let byte = if unsigned { *byte as u32 } else { *byte as i8 as i32 as u32 };
        value = byte.wrapping_add(value << 8);
        if i % 4 == 3 {
            words[filled] = value;
            filled += 1;
            value = pad;
        }
    }
    if filled < N {
        words[filled] = value;
    }
    words
}

fn legacy_name_hash(name: &[u8], unsigned: bool) -> u32 {
    let (mut hash0, mut hash1) = (0x12A3_FE2Du32, 0x37AB_E8F9u32);
    for byte in name {
        let byte = if unsigned { *byte as i32 } else { *byte as i8 as i32 };
        let mut hash = hash1.wrapping_add(hash0 ^ byte.wrapping_mul(7_152_373) as u32);
        if hash & 0x8000_0000 != 0 {
            hash = hash.wrapping_sub(0x7FFF_FFFF);
        }
        hash1 = hash0;
        hash0 = hash;
    }
    hash0 << 1
}

/// MD4's compression with half its rounds' steps, as ext4 uses it.
fn half_md4_transform(state: &mut [u32; 4], input: &[u32; 8]) {
    const ROUNDS: [([usize; 8], [u32; 4], u32); 3] = [
        ([0, 1, 2, 3, 4, 5, 6, 7], [3, 7, 11, 19], 0),
        ([1, 3, 5, 7, 0, 2, 4, 6], [3, 5, 9, 13], 0o13240474631),
        ([3, 7, 2, 6, 1, 5, 0, 4], [3, 9, 11, 15], 0o15666365641),
    ];
    let mut v = *state;
    for (round, (inputs, shifts, constant)) in ROUNDS.iter().enumerate() {
        for (step, input_index) in inputs.iter().enumerate() {
            // The word updated goes a, d, c, b; the function takes the other three in order.
            let target = (4 - step % 4) % 4;
            let (x, y, z) = (v[(target + 1) % 4], v[(target + 2) % 4], v[(target + 3) % 4]);
            let mixed = match round {
                0 => z ^ (x & (y ^ z)),
                1 => (x & y).wrapping_add((x ^ y) & z),
                _ => x ^ y ^ z,
            };
            v[target] = v[target].wrapping_add(mixed).wrapping_add(input[*input_index].wrapping_add(*constant)).rotate_left(shifts[step % 4]);
        }
    }
    for (word, added) in state.iter_mut().zip(v) {
        *word = word.wrapping_add(added);
    }
}

fn tea_transform(state: &mut [u32; 4], input: &[u32; 4]) {
    let (mut b0, mut b1, mut sum) = (state[0], state[1], 0u32);
    let [a, b, c, d] = *input;
    for _ in 0..16 {
        sum = sum.wrapping_add(0x9E37_79B9);
        b0 = b0.wrapping_add((b1 << 4).wrapping_add(a) ^ b1.wrapping_add(sum) ^ (b1 >> 5).wrapping_add(b));
        b1 = b1.wrapping_add((b0 << 4).wrapping_add(c) ^ b0.wrapping_add(sum) ^ (b0 >> 5).wrapping_add(d));
    }
    state[0] = state[0].wrapping_add(b0);
    state[1] = state[1].wrapping_add(b1);
}

/// Appends the xattr entries starting at `first` in `area` (values at
/// `values_base` + their offset), refusing any that reach outside it.
fn parse_xattr_entries(number: u32, area: &[u8], first: usize, values_base: usize, out: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
    let mut offset = first;
    while offset + 4 <= area.len() && le32(area, offset) != 0 {
        if offset + 16 > area.len() {
            bail!("inode {number} has a truncated xattr entry");
        }
        let name_length = area[offset] as usize;
        let index = area[offset + 1];
        let value_offset = le16(area, offset + 2) as usize;
        let value_inode = le32(area, offset + 4);
        let value_size = le32(area, offset + 8) as usize;
        let name_end = offset + 16 + name_length;
        if name_end > area.len() {
            bail!("inode {number} has an xattr name past the end of its area");
        }
        if value_inode != 0 {
            bail!("inode {number} keeps an xattr value in inode {value_inode} (ea_inode), which verify does not read");
        }
        let prefix: &[u8] = match index {
            1 => b"user.",
            2 => b"system.posix_acl_access",
            3 => b"system.posix_acl_default",
            4 => b"trusted.",
            6 => b"security.",
            7 => b"system.",
            8 => b"system.richacl",
            other => bail!("inode {number} has an xattr in unknown namespace {other}"),
        };
        let start = values_base + value_offset;
        let Some(value) = start.checked_add(value_size).and_then(|end| area.get(start..end)) else {
            bail!("inode {number} has an xattr value outside its area");
        };
        let mut name = prefix.to_vec();
        name.extend_from_slice(&area[offset + 16..name_end]);
        out.push((name, value.to_vec()));
        offset = (name_end + 3) & !3;
    }
    Ok(())
}

/// An ACL as ext4 stores it (version 1, short entries for the owner, group,
/// mask and other) in the form `lgetxattr` returns (version 2, every entry
/// with an id), so the build host's and the image's values compare.
fn acl_to_xattr(disk: &[u8]) -> Result<Vec<u8>> {
    if disk.len() < 4 || le32(disk, 0) != 1 {
        bail!("not a version 1 ext4 ACL");
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut offset = 4;
    while offset < disk.len() {
        if offset + 4 > disk.len() {
            bail!("a truncated ACL entry");
        }
        let tag = le16(disk, offset);
        let permissions = le16(disk, offset + 2);
        let id = match tag {
            0x2 | 0x8 => {
                if offset + 8 > disk.len() {
                    bail!("a truncated ACL entry");
                }
                let id = le32(disk, offset + 4);
                offset += 8;
                id
            }
            0x1 | 0x4 | 0x10 | 0x20 => {
                offset += 4;
                u32::MAX
            }
            other => bail!("an ACL entry with unknown tag {other:#x}"),
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&permissions.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// CRC-32C (Castagnoli) as ext4 computes it: from `crc`, without the final inversion.
fn crc32c(mut crc: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut value = i as u32;
            let mut bit = 0;
            while bit < 8 {
                value = if value & 1 != 0 { (value >> 1) ^ 0x82F6_3B78 } else { value >> 1 };
                bit += 1;
            }
            table[i] = value;
            i += 1;
        }
        table
    };
    for byte in bytes {
        crc = TABLE[((crc ^ *byte as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// Digests of regular files by inode, so hard links are read once.
#[derive(Default)]
pub struct Digests(HashMap<u32, [u8; 32]>);

impl Digests {
    pub fn sha256(&mut self, fs: &FileSystem, entry: &Entry) -> Result<[u8; 32]> {
        if let Some(digest) = self.0.get(&entry.inode) {
            return Ok(*digest);
        }
        let digest = fs.sha256(entry)?;
        self.0.insert(entry.inode, digest);
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    use crate::process::Cmd;

    /// A file system made by mkfs.ext4 -d from `tree`, as the disk stage
    /// makes them (plus `options`); None (the test skips) without e2fsprogs.
    fn make(tree: &Path, options: &[&str]) -> Option<(tempfile::TempDir, PathBuf)> {
        if !crate::process::have_program("mkfs.ext4") {
            eprintln!("skipped: mkfs.ext4 is not installed (scripts/install-host-tools installs e2fsprogs)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.ext4");
        File::create(&image).unwrap().set_len(32 << 20).unwrap();
        // SAFETY: getuid and getgid cannot fail.
        let owner = unsafe { format!("root_owner={}:{}", libc::getuid(), libc::getgid()) };
        Cmd::new("mkfs.ext4")
            .args(["-q", "-F", "-T", "default", "-b", "4096", "-N", "1024", "-E", &owner])
            .args(options)
            .arg("-d")
            .arg(tree)
            .arg(&image)
            .run()
            .unwrap();
        Some((dir, image))
    }

    fn debugfs(image: &Path, commands: &str) {
        Cmd::new("debugfs").args(["-w", "-f", "-"]).arg(image).stdin_bytes(commands.as_bytes().to_vec()).run().unwrap();
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
        let path = CString::new(path.as_os_str().as_bytes()).unwrap();
        let name = CString::new(name).unwrap();
        // SAFETY: NUL-terminated strings and a buffer of the given length.
        unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) == 0 }
    }

    fn entries(image: &Path) -> Result<Vec<Entry>> {
        let file = File::open(image).unwrap();
        let length = file.metadata().unwrap().len();
        FileSystem::open(&file, 0, length)?.entries()
    }

    /// The image's records as verify computes them, against the tree's baseline.
    fn check_reads_as_its_tree(tree: &Path, image: &Path) {
        let file = File::open(image).unwrap();
        let found = crate::verify::read_root(&file, 0, file.metadata().unwrap().len()).unwrap();
        let expected = crate::baseline::compute(tree).unwrap().into_iter().map(|r| (r.path.clone(), r)).collect();
        let differences = crate::verify::compare(&expected, &found);
        assert!(differences.is_empty(), "{differences:?}");
    }

    /// A tree with each kind of entry mkfs.ext4 -d copies without root.
    fn sample_tree() -> tempfile::TempDir {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("etc/deep/er")).unwrap();
        std::fs::write(root.join("etc/hostname"), "box\n").unwrap();
        std::fs::write(root.join("etc/empty"), "").unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(root.join("etc/deep/er/big"), &big).unwrap();
        // Data, holes, data...: a sparse file with more extents than i_block holds.
        let sparse = File::create(root.join("sparse")).unwrap();
        for i in 0..12u64 {
            sparse.write_all_at(b"data", i * 65536).unwrap();
        }
        sparse.set_len(2 << 20).unwrap();
        std::os::unix::fs::symlink("hostname", root.join("etc/fast")).unwrap();
        std::os::unix::fs::symlink("x".repeat(200), root.join("etc/slow")).unwrap();
        std::fs::write(root.join("caf\u{e9}"), "utf-8 name").unwrap();
        std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"latin1-caf\xe9")), "not utf-8").unwrap();
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
        std::fs::set_permissions(root.join("etc/hostname"), std::os::unix::fs::PermissionsExt::from_mode(0o4751)).unwrap();
        if set_xattr(&root.join("etc/hostname"), "user.small", b"1") {
            set_xattr(&root.join("etc/hostname"), "user.big", &[0xab; 300]);
        }
        // An ACL (xattr form: version 2; user::rwx, user 1000 r, group::r-x, mask r-x, other ---).
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [(1u16, 7u16, u32::MAX), (2, 4, 1000), (4, 5, u32::MAX), (0x10, 5, u32::MAX), (0x20, 0, u32::MAX)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        set_xattr(&root.join("etc/deep"), "system.posix_acl_access", &acl);
        tree
    }

    #[test]
    fn file_system_made_by_mkfs_reads_as_its_tree() {
        let tree = sample_tree();
        let Some((_dir, image)) = make(tree.path(), &[]) else { return };
        check_reads_as_its_tree(tree.path(), &image);
        let entries = entries(&image).unwrap();
        let paths: Vec<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
        assert!(paths.contains(&&b"/latin1-caf\xe9"[..]) && paths.contains(&"/caf\u{e9}".as_bytes()), "names are bytes, none merged");
        let hostname = entries.iter().find(|e| e.path == b"/etc/hostname").unwrap();
        if !hostname.xattrs.is_empty() {
            assert_eq!(hostname.xattrs.iter().map(|(n, _)| n.as_slice()).collect::<Vec<_>>(), [&b"user.big"[..], b"user.small"], "in-inode and block xattrs");
        }
    }

    #[test]
    fn inline_data_and_hash_tree_directories_are_read() {
        let tree = sample_tree();
        std::fs::create_dir(tree.path().join("many")).unwrap();
        for i in 0..600 {
            std::fs::write(tree.path().join(format!("many/entry-with-a-longish-name-{i:04}")), i.to_string()).unwrap();
        }
        // mke2fs 1.47.0 -d with inline_data drops a sparse file's trailing hole (its size shrinks).
        std::fs::remove_file(tree.path().join("sparse")).unwrap();
        let Some((_dir, image)) = make(tree.path(), &["-O", "inline_data"]) else { return };
        // e2fsck -D indexes every directory of more than one block.
        let output = Cmd::new("e2fsck").args(["-f", "-y", "-D"]).arg(&image).run_unchecked().unwrap();
        assert!(output.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&output.stdout));
        let file = File::open(&image).unwrap();
        let fs = FileSystem::open(&file, 0, file.metadata().unwrap().len()).unwrap();
        let listed = fs.entries().unwrap();
        let many = listed.iter().find(|e| e.path == b"/many").unwrap();
        assert_ne!(fs.inode(many.inode).unwrap().flags & FLAG_INDEX, 0, "/many has a hash-tree index");
        let hostname = listed.iter().find(|e| e.path == b"/etc/hostname").unwrap();
        assert_ne!(fs.inode(hostname.inode).unwrap().flags & FLAG_INLINE_DATA, 0, "small files are inline");
        let deep = listed.iter().find(|e| e.path == b"/etc/deep").unwrap();
        assert_ne!(fs.inode(deep.inode).unwrap().flags & FLAG_INLINE_DATA, 0, "small directories are inline");
        check_reads_as_its_tree(tree.path(), &image);
    }

    #[test]
    fn device_nodes_read_in_both_encodings() {
        let tree = tempfile::tempdir().unwrap();
        let Some((_dir, image)) = make(tree.path(), &[]) else { return };
        // debugfs mknod takes the name literally, so from inside the directory.
        debugfs(&image, "cd /\nmknod null c 1 3\nmknod wide b 300 1000\n");
        let devices: Vec<(Vec<u8>, Kind, (u32, u32))> = entries(&image).unwrap().into_iter().filter(|e| e.device != (0, 0)).map(|e| (e.path, e.kind, e.device)).collect();
        assert_eq!(devices, vec![(b"/null".to_vec(), Kind::CharDevice, (1, 3)), (b"/wide".to_vec(), Kind::BlockDevice, (300, 1000))]);
    }

    #[test]
    fn capability_set_in_the_image_is_listed() {
        let tree = sample_tree();
        let Some((dir, image)) = make(tree.path(), &[]) else { return };
        let value = dir.path().join("cap");
        std::fs::write(&value, [1, 0, 0, 2, 0x80, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        debugfs(&image, &format!("ea_set -f {} /etc/empty security.capability\n", value.display()));
        let empty = entries(&image).unwrap().into_iter().find(|e| e.path == b"/etc/empty").unwrap();
        assert_eq!(*empty.xattrs, vec![(b"security.capability".to_vec(), std::fs::read(&value).unwrap())]);
    }

    /// A file system without checksums, `patch` applied to its bytes, and the
    /// error reading it gives.
    fn refusal(setup: &str, patch: impl FnOnce(&mut Vec<u8>, &FileSystem)) -> String {
        refusal_with(&["-O", "^metadata_csum"], setup, patch)
    }

    fn refusal_with(options: &[&str], setup: &str, patch: impl FnOnce(&mut Vec<u8>, &FileSystem)) -> String {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("d")).unwrap();
        for name in ["aaaa", "bbbb", "zz"] {
            std::fs::write(tree.path().join("d").join(name), "content").unwrap();
        }
        let Some((_dir, image)) = make(tree.path(), options) else { return "skipped".into() };
        if !setup.is_empty() {
            debugfs(&image, setup);
        }
        let mut bytes = std::fs::read(&image).unwrap();
        {
            let file = File::open(&image).unwrap();
            let fs = FileSystem::open(&file, 0, bytes.len() as u64).unwrap();
            patch(&mut bytes, &fs);
        }
        std::fs::write(&image, &bytes).unwrap();
        match read_as_verify(&image) {
            Ok(_) => panic!("a hostile file system was read ({setup:?})"),
            Err(error) => format!("{error:#}"),
        }
    }

    /// Reads `image` as verify does: the listing, then every file's content.
    fn read_as_verify(image: &Path) -> Result<()> {
        let file = File::open(image).unwrap();
        let fs = FileSystem::open(&file, 0, file.metadata().unwrap().len())?;
        for entry in fs.entries()? {
            if entry.kind == Kind::File {
                fs.sha256(&entry)?;
            }
        }
        Ok(())
    }

    /// `patch` applied to the bytes of `image` (given the file system as it was).
    fn patch_image(image: &Path, patch: impl FnOnce(&mut Vec<u8>, &FileSystem)) {
        let mut bytes = std::fs::read(image).unwrap();
        {
            let file = File::open(image).unwrap();
            let fs = FileSystem::open(&file, 0, bytes.len() as u64).unwrap();
            patch(&mut bytes, &fs);
        }
        std::fs::write(image, &bytes).unwrap();
    }

    /// Where inode `number` starts in the image's bytes.
    fn inode_offset(fs: &FileSystem, number: u32) -> usize {
        let group = &fs.groups[((number - 1) / fs.inodes_per_group) as usize];
        (group.inode_table * fs.block_size + ((number - 1) % fs.inodes_per_group) as u64 * fs.inode_size) as usize
    }

    /// The inode number of `path` in `fs`.
    fn inode_of(fs: &FileSystem, path: &[u8]) -> u32 {
        fs.entries().unwrap().into_iter().find(|e| e.path == path).unwrap().inode
    }

    fn replace_once(bytes: &mut [u8], old: &[u8], new: &[u8]) {
        let at: Vec<usize> = bytes.windows(old.len()).enumerate().filter(|(_, w)| *w == old).map(|(i, _)| i).collect();
        assert_eq!(at.len(), 1, "{} occurs once", String::from_utf8_lossy(old));
        bytes[at[0]..at[0] + new.len()].copy_from_slice(new);
    }

    fn check_refused(error: String, expected: &str) {
        assert!(error == "skipped" || error.contains(expected), "{error}\nshould contain: {expected}");
    }

    #[test]
    fn hostile_file_systems_are_refused_naming_the_place() {
        check_refused(refusal("", |b, _| replace_once(b, b"aaaa", b"a/aa")), "directory inode 12 at /d has an entry named \"a/aa\" (inode ");
        check_refused(refusal("", |b, _| replace_once(b, b"zz", b"..")), "at /d has a second \"..\" entry");
        check_refused(refusal("", |b, _| replace_once(b, b"bbbb", b"aaaa")), "at /d has two entries named \"aaaa\"");
        check_refused(refusal("ln /d /d/again\n", |_, _| {}), "is reached twice (a directory loop or hard-linked directory)");
        check_refused(
            refusal("", |b, fs| {
                // The first extent of inode 13 (a file below /d) pointed far past the end.
                let at = (fs.groups[0].inode_table * fs.block_size + 12 * fs.inode_size) as usize + 0x28 + 12 + 8;
                assert_eq!(le16(b, at - 20), EXTENT_MAGIC, "inode 13 has extents");
                b[at..at + 4].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
            }),
            "inode 13 has an extent pointing past the end of the file system",
        );
        check_refused(
            refusal("", |b, fs| {
                // Inode 13 claims a TiB: its holes would be hashed for an hour.
                let at = (fs.groups[0].inode_table * fs.block_size + 12 * fs.inode_size) as usize + 0x6C;
                b[at..at + 4].copy_from_slice(&0x100u32.to_le_bytes());
            }),
            "bytes of holes in all",
        );
        check_refused(refusal("", |b, _| b[1024 + 0x60] |= INCOMPAT_RECOVER as u8), "the file system needs recovery: its journal holds changes");
        check_refused(refusal("", |b, _| b[1024 + 0x62] |= 0x01), "the file system uses ext4 features verify does not read: encrypt");
        check_refused(refusal("", |b, _| b[1024 + 0x65] |= 0x02), "the file system uses ext4 features verify does not read: bigalloc");
        check_refused(refusal("", |b, _| b[1024 + 0x66] |= 0x01), "the file system uses ext4 features verify does not read: orphan_present");
    }

    #[test]
    fn metadata_changed_without_its_checksum_is_refused() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283, "CRC-32C check value");
        let checksummed: &[&str] = &[];
        check_refused(refusal_with(checksummed, "", |b, _| replace_once(b, b"aaaa", b"aaab")), "directory inode 12 at /d: a block's checksum does not match");
        check_refused(
            refusal_with(checksummed, "", |b, fs| {
                let at = (fs.groups[0].inode_table * fs.block_size + 12 * fs.inode_size) as usize;
                b[at + 1] ^= 0x08; // the set-uid bit of i_mode
            }),
            "inode 13's checksum does not match",
        );
        check_refused(refusal_with(checksummed, "", |b, _| b[1024 + 0x78] ^= 1), "the superblock's checksum does not match");
    }

    #[test]
    fn file_system_larger_than_its_partition_is_refused() {
        let tree = tempfile::tempdir().unwrap();
        let Some((_dir, image)) = make(tree.path(), &[]) else { return };
        let file = File::open(&image).unwrap();
        let error = FileSystem::open(&file, 0, (16 << 20) as u64).err().unwrap();
        assert!(format!("{error:#}").contains("is larger than its partition (16777216 bytes)"), "{error:#}");
    }

    #[test]
    fn directory_entry_type_that_is_not_the_inodes_is_refused() {
        let type_of_aaaa = |b: &mut Vec<u8>, file_type: u8| {
            let at = b.windows(4).position(|w| w == b"aaaa").unwrap();
            assert_eq!(b[at - 2], 4, "the name length precedes the type");
            b[at - 1] = file_type;
        };
        check_refused(
            refusal("", |b, _| type_of_aaaa(b, 2)),
            "at /d/aaaa: its directory entry's file type is 2 (directory), but the inode's mode makes it 1 (regular file)",
        );
        check_refused(
            refusal("", |b, fs| {
                let at = b.windows(4).position(|w| w == b"aaaa").unwrap();
                let block = at - at % fs.block_size as usize;
                assert_eq!(&b[block + 8..block + 9], b".");
                b[block + 7] = 1;
            }),
            "directory inode 12 at /d: its \".\" entry has file type 1 (regular file), not 2 (directory)",
        );
        // Without the filetype feature every entry's type is 0 (unknown).
        let options = ["-O", "^metadata_csum,^filetype"];
        check_refused(refusal_with(&options, "", |b, _| type_of_aaaa(b, 1)), "its directory entry's file type is 1 (regular file), but the inode's mode makes it 0 (unknown)");
        let tree = sample_tree();
        let Some((_dir, image)) = make(tree.path(), &options) else { return };
        check_reads_as_its_tree(tree.path(), &image);
    }

    /// A file system whose /d has 600 entries and a hash-tree index
    /// (e2fsck -D), and the byte offset of the index's root block.
    fn indexed_directory(options: &[&str]) -> Option<(tempfile::TempDir, PathBuf, usize)> {
        indexed_directory_of(600, options)
    }

    fn indexed_directory_of(n_entries: usize, options: &[&str]) -> Option<(tempfile::TempDir, PathBuf, usize)> {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("d")).unwrap();
        for i in 0..n_entries {
            std::fs::write(tree.path().join(format!("d/entry-with-a-longish-name-{i:04}")), "").unwrap();
        }
        let (dir, image) = make(tree.path(), options)?;
        let output = Cmd::new("e2fsck").args(["-f", "-y", "-D"]).arg(&image).run_unchecked().unwrap();
        assert!(output.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&output.stdout));
        check_reads_as_its_tree(tree.path(), &image);
        let file = File::open(&image).unwrap();
        let fs = FileSystem::open(&file, 0, file.metadata().unwrap().len()).unwrap();
        let d = fs.inode(inode_of(&fs, b"/d")).unwrap();
        assert_ne!(d.flags & FLAG_INDEX, 0, "/d has a hash-tree index");
        assert!(d.size >= 4 * fs.block_size, "/d has several leaf blocks");
        let offset = (physical_block(&fs, &d, 0) * fs.block_size) as usize;
        Some((dir, image, offset))
    }

    /// The block of the file system holding block `logical` of `inode`.
    fn physical_block(fs: &FileSystem, inode: &Inode, logical: u64) -> u64 {
        let mut found = None;
        fs.walk_extents(inode, &inode.block, None, &mut 0, &mut |extent| {
            if (extent.logical..extent.logical + extent.length).contains(&logical) {
                found = Some(extent.physical + logical - extent.logical);
            }
            Ok(())
        })
        .unwrap();
        found.unwrap()
    }

    #[test]
    fn two_level_hash_tree_is_read_and_checked() {
        // 1 KiB blocks: 4000 names fill more leaves than the root's 123 entries.
        let Some((_dir, image, root)) = indexed_directory_of(4000, &["-b", "1024", "-N", "8192"]) else { return };
        assert_eq!(std::fs::read(&image).unwrap()[root + 0x1E], 1, "one level of index nodes");
        let Some((_dir, image, root)) = indexed_directory_of(4000, &["-b", "1024", "-N", "8192", "-O", "^metadata_csum"]) else { return };
        patch_image(&image, |b, fs| {
            let node = le32(&b[root..], 0x24) & HASH_TREE_BLOCK_MASK;
            let d = fs.inode(inode_of(fs, b"/d")).unwrap();
            let at = (physical_block(fs, &d, node as u64) * fs.block_size) as usize;
            assert_eq!((le32(b, at), le16(b, at + 4)), (0, 1024), "an index node's empty entry");
            b[at + 0xA] -= 1;
        });
        check_refused(format!("{:#}", read_as_verify(&image).unwrap_err()), "directory inode 12 at /d: its hash tree does not reach block");
    }

    #[test]
    fn hash_tree_that_does_not_reach_every_leaf_is_refused() {
        let refused = |options: &[&str], patch: &dyn Fn(&mut [u8])| -> String {
            let Some((_dir, image, root)) = indexed_directory(options) else { return "skipped".into() };
            patch_image(&image, |b, _| patch(&mut b[root..]));
            format!("{:#}", read_as_verify(&image).unwrap_err())
        };
        let plain: &[&str] = &["-O", "^metadata_csum"];
        // dx_root: countlimit at 0x20 (count at 0x22), then the first block, then {hash, block} pairs.
        let drop_last = |root: &mut [u8]| root[0x22] -= 1;
        check_refused(refused(plain, &drop_last), "directory inode 12 at /d: its hash tree does not reach block");
        check_refused(
            refused(plain, &|root| {
                let first = le32(root, 0x24);
                root[0x2C..0x30].copy_from_slice(&first.to_le_bytes());
            }),
            "directory inode 12 at /d: its hash tree reaches block 1 twice",
        );
        check_refused(refused(plain, &|root| root[0x2C..0x30].copy_from_slice(&999u32.to_le_bytes())), "its hash tree points at block 999, outside the directory's");
        check_refused(refused(plain, &|root| root[0x28..0x2C].fill(0xFF)), "hash-tree index block 0 has hashes out of order");
        // Leaves swapped: each is still reached once, but lookups for its names go to the other.
        check_refused(
            refused(plain, &|root| {
                let (first, second) = (le32(root, 0x24), le32(root, 0x2C));
                root[0x24..0x28].copy_from_slice(&second.to_le_bytes());
                root[0x2C..0x30].copy_from_slice(&first.to_le_bytes());
            }),
            "but its hash is",
        );
        check_refused(refused(plain, &|root| root[0x1E] = 2), "its hash tree has 2 levels of index nodes, more than the kernel reads (1)");
        check_refused(refused(plain, &|root| root[0x20] += 1), "hash-tree index block 0 has");
        // With metadata_csum the index carries its own checksum.
        check_refused(refused(&[], &drop_last), "directory inode 12 at /d: hash-tree index block 0's checksum does not match");
    }

    #[test]
    fn name_hashes_are_the_kernels() {
        // From debugfs's dx_hash -h VERSION -s 01234567-89ab-cdef-0123-456789abcdef NAME.
        let seed = [0x6745_2301, 0xEFCD_AB89, 0x6745_2301, 0xEFCD_AB89];
        let long: &[u8] = b"entry-with-a-longish-name-0599-and-then-some-\xc3\xa9";
        let cases: &[(&[u8], [u32; 6])] = &[
            (b"caf\xe9x", [0x65b731c0, 0xa9902e84, 0x9fb7eece, 0x7c7cbfa2, 0x7d25f836, 0xd5a2f55e]),
            (b"x", [0xb26f0bdc, 0xc55c961e, 0xe958e760, 0xb26f0bdc, 0xc55c961e, 0xe958e760]),
            (long, [0xc6a79e20, 0xfe2b6dc4, 0xc820cdf8, 0x5c6bff2a, 0x446ceffc, 0x93bc0494]),
        ];
        for (name, hashes) in cases {
            let found: Vec<u32> = (0..6).map(|version| NameHash { version, seed }.hash(name)).collect();
            assert_eq!(found, hashes, "{}", String::from_utf8_lossy(name));
        }
        assert_eq!(NameHash { version: 1, seed: [0; 4] }.hash(b"x"), 0x497ef0fe, "a zero seed is the default one");
    }

    #[test]
    fn extent_node_outside_its_index_entry_is_refused() {
        let refused = |patch: &dyn Fn(&mut [u8])| -> String {
            let tree = sample_tree();
            let Some((_dir, image)) = make(tree.path(), &["-O", "^metadata_csum"]) else { return "skipped".into() };
            patch_image(&image, |b, fs| {
                let at = inode_offset(fs, inode_of(fs, b"/sparse")) + 0x28;
                assert_eq!((le16(b, at), le16(b, at + 2), le16(b, at + 6)), (EXTENT_MAGIC, 1, 1), "/sparse has one index entry");
                patch(&mut b[at..at + 60]);
            });
            format!("{:#}", read_as_verify(&image).unwrap_err())
        };
        check_refused(refused(&|node| node[12] = 1), "has a damaged extent tree (a node's first block 0 is not its index entry's 1)");
        // A second index entry from block 96 on (to the same node): the node's extents past 96 are outside the first's.
        check_refused(
            refused(&|node| {
                node[2] = 2;
                let first = node[12..24].to_vec();
                node[24..36].copy_from_slice(&first);
                node[24..28].copy_from_slice(&96u32.to_le_bytes());
            }),
            "has a damaged extent tree (extent at block 96+1 outside its index entry's blocks 0..96)",
        );
    }

    #[test]
    fn hard_links_share_their_xattrs_and_the_listing_is_bounded() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(tree.path().join("f"), "linked").unwrap();
        set_xattr(&tree.path().join("f"), "user.big", &[0xab; 300]);
        for link in ["g", "h"] {
            std::fs::hard_link(tree.path().join("f"), tree.path().join(link)).unwrap();
        }
        let Some((_dir, image)) = make(tree.path(), &[]) else { return };
        check_reads_as_its_tree(tree.path(), &image);
        let links: Vec<Entry> = entries(&image).unwrap().into_iter().filter(|e| e.kind == Kind::File).collect();
        assert_eq!(links.len(), 3);
        assert!(links.iter().all(|e| e.inode == links[0].inode && Arc::ptr_eq(&e.xattrs, &links[0].xattrs)), "{links:?}");
        let file = File::open(&image).unwrap();
        let fs = FileSystem::open(&file, 0, file.metadata().unwrap().len()).unwrap();
        let xattr_block = fs.inode(links[0].inode).unwrap().file_acl;
        if xattr_block != 0 {
            // Another inode naming the same xattr block: the block is read once.
            debugfs(&image, &format!("write /dev/null other\nsif /other file_acl {xattr_block}\n"));
            let fs = FileSystem::open(&file, 0, file.metadata().unwrap().len()).unwrap();
            let listed = fs.entries().unwrap();
            let other = listed.iter().find(|e| e.path == b"/other").unwrap();
            assert_eq!(other.xattrs, links[0].xattrs);
            assert_eq!(fs.xattr_blocks.borrow().len(), 1);
        }
        let fs = FileSystem::open(&file, 0, file.metadata().unwrap().len()).unwrap();
        fs.held_budget.set(1000);
        let error = format!("{:#}", fs.entries().unwrap_err());
        assert!(error.contains("the listing's names, paths, targets and xattrs add up to more than 1073741824 bytes"), "{error}");
    }

    #[test]
    fn block_count_high_half_is_ignored_without_huge_file() {
        let tree = sample_tree();
        let Some((_dir, image)) = make(tree.path(), &["-O", "^huge_file,^metadata_csum"]) else { return };
        // As the kernel reads it, i_blocks is still 0: a fast symlink, its target in i_block.
        patch_image(&image, |b, fs| b[inode_offset(fs, inode_of(fs, b"/etc/fast")) + 0x74] = 1);
        let fast = entries(&image).unwrap().into_iter().find(|e| e.path == b"/etc/fast").unwrap();
        assert_eq!(fast.target, b"hostname");
    }
}
