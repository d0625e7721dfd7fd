/**
 * Repository format versions 1 (plain) and 2 (encrypted). FORMAT.md is the normative
 * description; keep them in step.
 */
export const FORMAT_NAME = 'holyship'
/** the newest format this holyship reads */
export const FORMAT_VERSION = 2
/** the format of a plain repository (unchanged, so older holyships keep reading them) */
export const FORMAT_VERSION_PLAIN = 1
/** the format of an encrypted repository (older holyships refuse it: REPO_NEWER_FORMAT) */
export const FORMAT_VERSION_ENCRYPTED = 2

export interface EncryptionParams {
  algorithm: 'aes-256-gcm'
  kdf: 'scrypt'
}

export type BlobType = 'data' | 'tree'

export interface RepoConfig {
  format: typeof FORMAT_NAME
  version: number
  id: string
  created: string
  /**
   * In the stored config of an encrypted repository there is no `seed`: it is derived from
   * the master key (MasterKey.chunkerSeed), and Repository.config (the effective config) has it.
   */
  chunker: {min: number; avg: number; max: number; seed: string}
  compression: {algorithm: 'zstd'; level: number}
  packSize: number
  /** null: a plain repository (format 1); else an encrypted one (format 2) */
  encryption: EncryptionParams | null
}

/** One blob's place inside a pack. `length` counts the stored bytes (encoding byte included). */
export interface PackBlob {
  id: string
  type: BlobType
  offset: number
  length: number
  /** plaintext length */
  raw: number
}

/** the newest snapshot manifest version this holyship reads */
export const MANIFEST_VERSION = 2

/** a manifest's version as this holyship sees it: one it reads, one `newer` than it reads, or `bad` (no version at all) */
export function manifestVersion(v: unknown): 'ok' | 'newer' | 'bad' {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) return 'bad'
  return v > MANIFEST_VERSION ? 'newer' : 'ok'
}

export interface IndexFile {
  version: 1
  packs: {id: string; size: number; blobs: PackBlob[]}[]
}

export type NodeType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'chardev' | 'blockdev' | 'fifo' | 'whiteout'

/** One entry of a directory; a tree blob is `{"nodes": TreeNode[]}` sorted by name. */
export interface TreeNode {
  name: string
  type: NodeType
  /** permission bits including setuid, setgid and sticky (mode & 0o7777) */
  mode: number
  uid: number
  gid: number
  /** modification time: [seconds since the epoch, nanoseconds] */
  mtime: [number, number]
  /**
   * direct reader only: status-change time and inode number, so that the next snapshot can
   * reuse an unchanged file's chunks without reading it (with size and mtime)
   */
  ctime?: [number, number]
  inode?: number
  /** regular files: length in bytes and the data blob ids in order */
  size?: number
  content?: string[]
  /** directories: the tree blob id of the directory's entries */
  subtree?: string
  /** symlinks: the target; hardlinks: the path (relative to the tree's root) of the first link */
  target?: string
  devMajor?: number
  devMinor?: number
  /** extended attributes, values base64 */
  xattrs?: Record<string, string>
  /** directories of a filesystem diff: replaces the image's directory instead of merging */
  opaque?: boolean
}

export interface Tree {
  nodes: TreeNode[]
}

export interface MountRecord {
  /** 'volume' for a named volume, 'bind' for a bind mount */
  type: 'volume' | 'bind'
  /** volume name, or the host path of a bind mount */
  source: string
  destination: string
  readOnly: boolean
  /** volume driver, labels and options at snapshot time */
  driver?: string
  labels?: Record<string, string>
  options?: Record<string, string>
  /**
   * a bind mount of one file (or of a socket or device, which has no content): `tree` is a
   * directory made up for it holding just that file, under the source's base name on the host
   * (nothing, for a socket), and `root` is absent
   */
  file?: boolean
  /** the volume's or bind's content */
  tree: string
  /** the mount's root directory itself: mode, owner, mtime */
  root?: TreeNode
  stats: ArchiveStats
}

export interface ArchiveStats {
  files: number
  dirs: number
  others: number
  bytes: number
  /** bytes of data blobs this snapshot added to the repository (compressed) */
  newBytes: number
  newBlobs: number
  /** paths that changed while they were read (a live snapshot) */
  changed?: string[]
  /** files reused from the parent snapshot without reading them */
  reused?: number
}

export interface ImageRecord {
  id: string
  repoTags: string[]
  /** a tree with one file, `image.tar`: the image as `docker save` writes it */
  tree: string
  size: number
}

/**
 * A network the container is on: its aliases and fixed addresses there, and (user-defined
 * networks) the network's own settings as `docker network inspect` shows them, to make it
 * again where it is missing. Older snapshots have only name, aliases, driver and labels: such
 * a network is made with the engine's defaults for the rest.
 */
export interface NetworkRecord {
  name: string
  aliases: string[]
  driver?: string
  labels?: Record<string, string>
  internal?: boolean
  attachable?: boolean
  enableIPv6?: boolean
  /** the driver's options (com.docker.network.bridge.name, …) */
  options?: Record<string, string>
  /** the network's IPAM: its subnets, ranges and gateways, as the engine shows them */
  ipam?: {Driver?: string; Options?: Record<string, string>; Config?: {Subnet?: string; IPRange?: string; Gateway?: string; AuxiliaryAddresses?: Record<string, string | undefined>}[]}
  /** the container's fixed addresses on it (`--ip`, compose's ipv4_address) */
  ipv4?: string
  ipv6?: string
  linkLocalIPs?: string[]
}

export interface ContainerRecord {
  id: string
  name: string
  /** the subset of `docker inspect` needed to re-create the container */
  config: Record<string, unknown>
  hostConfig: Record<string, unknown>
  networks: NetworkRecord[]
  image: ImageRecord
  /** the writable layer's changes against the image, with whiteouts; absent when empty */
  fsDiff?: string
  fsDiffStats?: ArchiveStats
  state: {running: boolean; paused: boolean}
}

export interface SnapshotManifest {
  /** 1; 2 when a mount is a bind-mounted file (`file`), which a holyship that reads only 1 would restore wrongly */
  version: 1 | 2
  kind: 'container' | 'volume'
  time: string
  host: string
  tags: string[]
  /** how the data was read: 'pause' | 'stop' | 'live' */
  consistency: 'pause' | 'stop' | 'live'
  reader: 'api' | 'direct'
  container?: ContainerRecord
  mounts: MountRecord[]
  /** totals of this snapshot */
  stats: {bytes: number; newBytes: number; files: number; durationMs: number}
  /** the previous snapshot of the same target, if any */
  parent?: string
}

export function dataKey(packId: string): string {
  return `data/${packId.slice(0, 2)}/${packId}`
}
export const indexKey = (id: string): string => `index/${id}`
export const snapshotKey = (id: string): string => `snapshots/${id}`
