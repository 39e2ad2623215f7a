//! A read-only ext4 reader for `rampart verify`: lists every entry of a file
//! system held in a file at a byte offset, with its metadata, xattrs and
//! content digest. The image is hostile: every offset is bounds-checked,
//! every walk bounded, odd names refused; this module never writes or runs
//! anything, and never turns a name from the image into a host path.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

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
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

const GROUP_INODE_UNINIT: u16 = 0x1;

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
    /// `lgetxattr` returns them (POSIX ACLs in their xattr form).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
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
    incompat: u32,
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
            incompat: 0,
            groups: Vec::new(),
            data_budget: Cell::new(length),
            hole_budget: Cell::new(MAX_HOLE_BYTES),
            checksum_seed: None,
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
        let unknown = incompat & !UNDERSTOOD_INCOMPAT;
        if unknown != 0 {
            let names: Vec<String> = (0..32)
                .map(|bit| 1u32 << bit)
                .filter(|flag| unknown & flag != 0)
                .map(|flag| INCOMPAT_NAMES.iter().find(|(f, _)| *f == flag).map_or(format!("{flag:#x}"), |(_, n)| n.to_string()))
                .collect();
            bail!("the file system uses ext4 features verify does not read: {}", names.join(", "));
        }
        fs.incompat = incompat;
        if le32(&sb, 0x64) & RO_COMPAT_METADATA_CSUM != 0 {
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
        let checksummed = le32(&sb, 0x64) & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
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
        self.read_blocks_shared(first, buffer)
    }

    /// `read_blocks` for blocks inodes may share (xattr blocks): not charged.
    fn read_blocks_shared(&self, first: u64, buffer: &mut [u8]) -> Result<()> {
        let count = buffer.len() as u64 / self.block_size;
        if first.checked_add(count).is_none_or(|end| end > self.blocks_count) {
            bail!("block {first} (+{count}) is past the end of the file system");
        }
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
        let mut sectors = le32(&raw, 0x1C) as u64 | (le16(&raw, 0x74) as u64) << 32;
        if flags & FLAG_HUGE_FILE != 0 {
            sectors *= self.block_size / 512;
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

    /// Every entry, the root first and then sorted by path bytes.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let root = self.inode(ROOT_INODE)?;
        let mut entries = vec![self.entry(Vec::new(), &root)?];
        if entries[0].kind != Kind::Dir {
            bail!("the root inode is not a directory");
        }
        entries[0].path = b"/".to_vec();
        let mut visited: HashSet<u32> = HashSet::from([ROOT_INODE]);
        let mut stack: Vec<(Inode, Vec<u8>, usize)> = vec![(root, Vec::new(), 0)];
        while let Some((directory, path, depth)) = stack.pop() {
            for (name, number) in self.directory(&directory, &path)? {
                let mut child_path = Vec::with_capacity(path.len() + 1 + name.len());
                child_path.extend_from_slice(&path);
                child_path.push(b'/');
                child_path.extend_from_slice(&name);
                if child_path.len() > MAX_PATH_BYTES {
                    bail!("a path below {} is longer than {MAX_PATH_BYTES} bytes", shown(&path));
                }
                let inode = self.inode(number).with_context(|| format!("while reading {}", shown(&child_path)))?;
                let entry = self.entry(child_path.clone(), &inode)?;
                if entry.kind == Kind::Dir {
                    if !visited.insert(number) {
                        bail!("directory inode {number} at {} is reached twice (a directory loop or hard-linked directory)", shown(&child_path));
                    }
                    if depth + 1 > MAX_DIRECTORY_DEPTH {
                        bail!("{} is nested deeper than {MAX_DIRECTORY_DEPTH} directories", shown(&child_path));
                    }
                    stack.push((inode, child_path, depth + 1));
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
        let xattrs = self.xattrs(inode).with_context(at)?;
        let mut entry = Entry {
            path: Vec::new(),
            inode: inode.number,
            kind,
            mode: inode.mode as u32 & 0o7777,
            uid: inode.uid,
            gid: inode.gid,
            size: if kind == Kind::File { inode.size } else { 0 },
            target: Vec::new(),
            device: (0, 0),
            xattrs: xattrs.into_iter().filter(|(name, _)| name != b"system.data").collect(),
        };
        match kind {
            Kind::Symlink => entry.target = self.symlink_target(inode).with_context(at)?,
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
        let fast = inode.flags & FLAG_INLINE_DATA == 0 && inode.sectors.saturating_sub(xattr_sectors) == 0;
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
    /// and extents out of order or overlapping (which also stops a node
    /// being visited twice).
    fn walk_extents(
        &self,
        inode: &Inode,
        node: &[u8],
        expected_depth: Option<u16>,
        next_logical: &mut u64,
        on_extent: &mut dyn FnMut(Extent) -> Result<()>,
    ) -> Result<()> {
        let number = inode.number;
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
                if physical.checked_add(length).is_none_or(|end| end > self.blocks_count) || physical == 0 {
                    bail!("inode {number} has an extent pointing past the end of the file system (block {physical}+{length})");
                }
                *next_logical = logical + length;
                on_extent(Extent { logical, length, physical, unwritten })?;
            } else {
                if logical < *next_logical {
                    bail!("inode {number} has a damaged extent tree (index out of order at block {logical})");
                }
                let child = (le16(node, at + 8) as u64) << 32 | le32(node, at + 4) as u64;
                let mut block = vec![0u8; self.block_size as usize];
                self.read_blocks(child, &mut block).with_context(|| format!("while reading inode {number}'s extent tree"))?;
                self.walk_extents(inode, &block, Some(depth - 1), next_logical, on_extent)?;
            }
        }
        Ok(())
    }

    /// The `(name, inode)` of every entry but `.` and `..`, refusing names
    /// the kernel would not produce or that could leave a directory.
    fn directory(&self, directory: &Inode, path: &[u8]) -> Result<Vec<(Vec<u8>, u32)>> {
        let mut listing = Listing { fs: self, number: directory.number, path, position: 0, names: HashSet::new(), entries: Vec::new() };
        let checksum_seed = directory.checksum_seed;
        let indexed = directory.flags & FLAG_INDEX != 0;
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
            return Ok(listing.entries);
        }
        if directory.size > MAX_DIRECTORY_BYTES || !directory.size.is_multiple_of(self.block_size) || directory.size == 0 {
            bail!("directory inode {} at {} has an invalid size ({})", directory.number, shown(path), directory.size);
        }
        let block_size = self.block_size as usize;
        self.read_data(directory, &mut |chunk| {
            for block in chunk.chunks(block_size) {
                // A leaf block ends in a 12-byte entry holding its checksum;
                // hash-tree index blocks keep theirs elsewhere and are not checked.
                if let Some(seed) = checksum_seed {
                    let tail = block_size - 12;
                    let has_tail = le32(block, tail) == 0 && le16(block, tail + 4) == 12 && block[tail + 6] == 0 && block[tail + 7] == 0xDE;
                    if has_tail && crc32c(seed, &block[..tail]) != le32(block, tail + 8) {
                        bail!("directory inode {} at {}: a block's checksum does not match (metadata_csum)", listing.number, shown(listing.path));
                    }
                    if !has_tail && !indexed {
                        bail!("directory inode {} at {}: a block without its checksum (metadata_csum)", listing.number, shown(listing.path));
                    }
                }
                listing.parse(block)?;
            }
            Ok(())
        })?;
        if listing.position < 2 {
            bail!("directory inode {} at {} has no . and .. entries", directory.number, shown(path));
        }
        Ok(listing.entries)
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

    /// In-inode and block xattrs, sorted by name, ACLs in their xattr form.
    fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut xattrs = self.ibody_xattrs(inode)?;
        if inode.file_acl != 0 {
            let mut block = vec![0u8; self.block_size as usize];
            self.read_blocks_shared(inode.file_acl, &mut block).context("while reading the xattr block")?;
            if le32(&block, 0) != XATTR_MAGIC || le32(&block, 8) != 1 {
                bail!("the xattr block {} is damaged (bad magic or block count)", inode.file_acl);
            }
            if let Some(seed) = self.checksum_seed {
                let stored = le32(&block, 0x10);
                block[0x10..0x14].fill(0);
                if crc32c(crc32c(seed, &inode.file_acl.to_le_bytes()), &block) != stored {
                    bail!("the xattr block {}'s checksum does not match (metadata_csum)", inode.file_acl);
                }
            }
            parse_xattr_entries(inode.number, &block, 32, 0, &mut xattrs)?;
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
    names: HashSet<Vec<u8>>,
    entries: Vec<(Vec<u8>, u32)>,
}

impl Listing<'_, '_> {
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
            offset += record_length;
            if number == 0 {
                continue;
            }
            let name_shown = String::from_utf8_lossy(name);
            let dot = name == b"." || name == b"..";
            match self.position {
                0 if name != b"." => bail!("{}: its first entry is {name_shown:?}, not \".\"", at()),
                1 if name != b".." => bail!("{}: its second entry is {name_shown:?}, not \"..\"", at()),
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
                    if !self.names.insert(name.to_vec()) {
                        bail!("{} has two entries named {name_shown:?}", at());
                    }
                    self.entries.push((name.to_vec(), number));
                }
            }
            self.position += 1;
        }
        Ok(())
    }
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
        assert_eq!(empty.xattrs, vec![(b"security.capability".to_vec(), std::fs::read(&value).unwrap())]);
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
        // As verify reads it: the listing, then every file's content.
        let read = |image: &Path| -> Result<()> {
            let file = File::open(image).unwrap();
            let fs = FileSystem::open(&file, 0, bytes.len() as u64)?;
            for entry in fs.entries()? {
                if entry.kind == Kind::File {
                    fs.sha256(&entry)?;
                }
            }
            Ok(())
        };
        match read(&image) {
            Ok(_) => panic!("a hostile file system was read ({setup:?})"),
            Err(error) => format!("{error:#}"),
        }
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
}
