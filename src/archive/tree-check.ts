/**
 * Trees come from the repository, and a repository can come from a hostile remote: a tree
 * blob whose hash matches its id can still name `..`, contain `/` or NUL in a name, list a
 * name twice, or give a hard link that climbs out of the tree. Every tree that is restored
 * or walked is checked here, in one place, when it is read; a bad one is REPO_DAMAGED and
 * names the tree. Nothing below ever resolves a path through one of these names.
 */
import {HolyshipError} from '../errors.js'
import {NodeType, Tree, TreeNode} from '../repo/format.js'
import {Repository} from '../repo/repository.js'
import {isCanonicalName} from './names.js'

const NODE_TYPES = new Set<NodeType>(['file', 'dir', 'symlink', 'hardlink', 'chardev', 'blockdev', 'fifo', 'whiteout'])
const HEX64 = /^[0-9a-f]{64}$/

/** A tree whose content is unsafe or malformed (its bytes match its hash: it was made so). */
export class UnsafeTreeError extends HolyshipError {
  constructor(readonly treeId: string, message: string) {
    super('REPO_DAMAGED', `tree ${treeId.slice(0, 16)} is damaged or hostile: ${message}`)
  }
}

/** Why a single path component is not acceptable as an entry name, or undefined when it is. */
export function badName(name: unknown): string | undefined {
  if (typeof name !== 'string') return 'the name is not a string'
  if (name === '') return 'the name is empty'
  if (name === '.' || name === '..') return `the name is ${JSON.stringify(name)}`
  if (name.includes('/')) return 'the name contains "/"'
  if (name.includes('\0')) return 'the name contains a NUL byte'
  // two strings for the same bytes would get past the duplicate check below
  if (!isCanonicalName(name)) return 'the name is not in the form a snapshot writes (bytes that are not UTF-8 escaped twice over)'
  return undefined
}

/**
 * Why a relative `/`-separated path (a hard link's target, a path from a tar stream) is not
 * acceptable, or undefined: no leading `/`, no empty, `.` or `..` component, no NUL.
 */
export function badRelPath(p: unknown): string | undefined {
  if (typeof p !== 'string') return 'not a string'
  if (p === '') return 'empty'
  if (p.startsWith('/')) return 'absolute'
  if (p.includes('\0')) return 'contains a NUL byte'
  for (const c of p.split('/')) {
    if (c === '' || c === '.' || c === '..') return `has a ${JSON.stringify(c)} component`
  }
  return undefined
}

const isUint = (v: unknown, max = Number.MAX_SAFE_INTEGER): boolean => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max

/** Check one node; returns the problem or undefined. */
function nodeProblem(n: TreeNode): string | undefined {
  if (!n || typeof n !== 'object') return 'an entry is not an object'
  const nameProblem = badName(n.name)
  if (nameProblem) return `entry ${JSON.stringify(n.name)}: ${nameProblem}`
  const what = `entry ${JSON.stringify(n.name)}`
  if (!NODE_TYPES.has(n.type)) return `${what}: unknown type ${JSON.stringify(n.type)}`
  if (!isUint(n.mode, 0o7777)) return `${what}: bad mode ${JSON.stringify(n.mode)}`
  if (!isUint(n.uid, 0xffffffff) || !isUint(n.gid, 0xffffffff)) return `${what}: bad owner ${JSON.stringify([n.uid, n.gid])}`
  if (!Array.isArray(n.mtime) || n.mtime.length !== 2 || !n.mtime.every((x) => typeof x === 'number' && Number.isFinite(x))) {
    return `${what}: bad mtime ${JSON.stringify(n.mtime)}`
  }
  if (n.xattrs !== undefined) {
    if (!n.xattrs || typeof n.xattrs !== 'object' || Array.isArray(n.xattrs)) return `${what}: bad xattrs`
    for (const [k, v] of Object.entries(n.xattrs)) {
      if (k === '' || k.includes('\0') || typeof v !== 'string') return `${what}: bad xattr ${JSON.stringify(k)}`
    }
  }
  switch (n.type) {
    case 'file':
      if (n.size !== undefined && !isUint(n.size)) return `${what}: bad size ${JSON.stringify(n.size)}`
      if (n.content !== undefined && (!Array.isArray(n.content) || !n.content.every((c) => typeof c === 'string' && HEX64.test(c)))) {
        return `${what}: bad content list`
      }
      break
    case 'dir':
      if (n.subtree !== undefined && (typeof n.subtree !== 'string' || !HEX64.test(n.subtree))) return `${what}: bad subtree id`
      break
    case 'symlink':
      if (typeof n.target !== 'string' || n.target === '' || n.target.includes('\0')) return `${what}: bad symlink target ${JSON.stringify(n.target)}`
      break
    case 'hardlink': {
      const p = badRelPath(n.target)
      if (p) return `${what}: hard link target ${JSON.stringify(n.target)} is ${p}`
      break
    }
    case 'chardev':
    case 'blockdev':
      if ((n.devMajor !== undefined && !isUint(n.devMajor, 0xffffffff)) || (n.devMinor !== undefined && !isUint(n.devMinor, 0xffffffff))) {
        return `${what}: bad device numbers`
      }
      break
  }
  if (n.type !== 'file' && Array.isArray(n.content) && n.content.length > 0) return `${what}: a ${n.type} with file content`
  if (n.type !== 'dir' && n.subtree !== undefined) return `${what}: a ${n.type} with a subtree`
  return undefined
}

/** Throw UnsafeTreeError unless `tree` is a well-formed tree with safe, unique names. */
export function validateTree(tree: unknown, id: string): asserts tree is Tree {
  const t = tree as Tree
  if (!t || typeof t !== 'object' || !Array.isArray(t.nodes)) throw new UnsafeTreeError(id, 'it is not a directory listing')
  const seen = new Set<string>()
  for (const n of t.nodes) {
    const p = nodeProblem(n)
    if (p) throw new UnsafeTreeError(id, p)
    if (seen.has(n.name)) throw new UnsafeTreeError(id, `entry ${JSON.stringify(n.name)} appears twice`)
    seen.add(n.name)
  }
}

/** Load a tree (hash-checked by the repository) and validate it. */
export async function loadCheckedTree(repo: Repository, id: string): Promise<Tree> {
  if (typeof id !== 'string' || !HEX64.test(id)) throw new UnsafeTreeError(String(id), 'not a tree id')
  let tree: Tree
  try {
    tree = await repo.loadTree(id)
  } catch (e) {
    if (e instanceof SyntaxError) throw new UnsafeTreeError(id, 'it is not valid JSON')
    // a short or garbled read (a truncated pack) is damage, like a hash mismatch
    if (!(e instanceof HolyshipError) && e instanceof Error && (e as NodeJS.ErrnoException).code === undefined) {
      throw new HolyshipError('REPO_DAMAGED', `tree ${id.slice(0, 16)} cannot be read: ${e.message}`, {cause: e})
    }
    throw e
  }
  validateTree(tree, id)
  return tree
}

/** the components of a relative path: [] for the root */
export function components(p: string): string[] {
  return p === '' ? [] : p.split('/')
}

/**
 * Whether `a` comes before `b` in a depth-first walk with parents first and siblings in tree
 * order (trees are sorted by name): component-wise comparison, a prefix first.
 */
export function walksBefore(a: string, b: string): boolean {
  const x = components(a)
  const y = components(b)
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] < y[i]
  }
  return x.length < y.length
}
