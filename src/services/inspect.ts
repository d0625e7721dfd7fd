/**
 * list, show and diff: answered from the catalogue (snapshots and cached trees), never
 * from packs.
 */
import {walkTree} from '../archive/restorer.js'
import {SnapshotRow} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {SnapshotManifest, TreeNode} from '../repo/format.js'
import {Context} from './context.js'

export function listSnapshots(ctx: Context, filter: {container?: string; volume?: string; tag?: string}): SnapshotRow[] {
  return ctx.catalogue.listSnapshots(ctx.repo.id, filter)
}

export function resolveSnapshot(ctx: Context, ref: string): {id: string; manifest: SnapshotManifest} {
  const id = ctx.catalogue.resolveSnapshot(ctx.repo.id, ref)
  const manifest = ctx.catalogue.getManifest(ctx.repo.id, id)
  if (!manifest) throw new HolyshipError('SNAPSHOT_NOT_FOUND', `snapshot ${id} is not in the catalogue`)
  return {id, manifest}
}

export interface ShowResult {
  id: string
  kind: string
  time: string
  host: string
  tags: string[]
  consistency: string
  reader: string
  container?: {
    name: string
    image: {id: string; tags: string[]; size: number}
    env: string[]
    cmd: unknown
    entrypoint: unknown
    labels: Record<string, string>
    ports: unknown
    restartPolicy: unknown
    networks: string[]
    fsDiff?: {files: number; dirs: number; others: number; bytes: number; deleted: number}
  }
  /** `file`: a bind-mounted file (or socket); `readOnly`: mounted read-only in the container */
  mounts: {type: string; source: string; destination: string; readOnly: boolean; file?: true; files: number; dirs: number; bytes: number; newBytes: number}[]
  bytes: number
  newBytes: number
  files: number
  durationMs: number
}

export async function showSnapshot(ctx: Context, ref: string): Promise<ShowResult> {
  const {id, manifest: m} = resolveSnapshot(ctx, ref)
  const c = m.container
  let fsDiff: NonNullable<ShowResult['container']>['fsDiff']
  if (c?.fsDiff) {
    const s = c.fsDiffStats
    let deleted = 0
    for await (const {node} of walkTree(ctx.repo, c.fsDiff)) if (node.type === 'whiteout') deleted++
    fsDiff = {files: s?.files ?? 0, dirs: s?.dirs ?? 0, others: (s?.others ?? 0) - deleted, bytes: s?.bytes ?? 0, deleted}
  }
  const cfg = (c?.config ?? {}) as Record<string, unknown>
  const hc = (c?.hostConfig ?? {}) as Record<string, unknown>
  return {
    id,
    kind: m.kind,
    time: m.time,
    host: m.host,
    tags: m.tags,
    consistency: m.consistency,
    reader: m.reader,
    container: c
      ? {
          name: c.name,
          image: {id: c.image.id, tags: c.image.repoTags, size: c.image.size},
          env: (cfg.Env as string[] | null) ?? [],
          cmd: cfg.Cmd,
          entrypoint: cfg.Entrypoint,
          labels: (cfg.Labels as Record<string, string> | null) ?? {},
          ports: hc.PortBindings,
          restartPolicy: hc.RestartPolicy,
          networks: c.networks.map((n) => n.name),
          fsDiff,
        }
      : undefined,
    mounts: m.mounts.map((mo) => ({
      type: mo.type,
      source: mo.source,
      destination: mo.destination,
      readOnly: mo.readOnly === true,
      ...(mo.file ? {file: true as const} : {}),
      files: mo.stats.files,
      dirs: mo.stats.dirs,
      bytes: mo.stats.bytes,
      newBytes: mo.stats.newBytes,
    })),
    bytes: m.stats.bytes,
    newBytes: m.stats.newBytes,
    files: m.stats.files,
    durationMs: m.stats.durationMs,
  }
}

export interface DiffEntry {
  change: 'added' | 'removed' | 'changed'
  /** 'fs' for the container filesystem diff, or the mount's volume name / bind path */
  scope: string
  path: string
}

function sameNode(a: TreeNode, b: TreeNode): boolean {
  return (
    a.type === b.type &&
    a.mode === b.mode &&
    a.uid === b.uid &&
    a.gid === b.gid &&
    a.mtime[0] === b.mtime[0] &&
    a.mtime[1] === b.mtime[1] &&
    a.size === b.size &&
    a.target === b.target &&
    JSON.stringify(a.content ?? []) === JSON.stringify(b.content ?? []) &&
    JSON.stringify(a.xattrs ?? {}) === JSON.stringify(b.xattrs ?? {})
  )
}

/** Compare two trees, descending only where subtree ids differ (unchanged subtrees cost nothing). */
async function diffTrees(ctx: Context, scope: string, a: string | undefined, b: string | undefined, prefix: string, out: DiffEntry[]): Promise<void> {
  if (a === b) return
  const ta = a ? (await ctx.repo.loadTree(a)).nodes : []
  const tb = b ? (await ctx.repo.loadTree(b)).nodes : []
  const mb = new Map(tb.map((n) => [n.name, n]))
  const ma = new Map(ta.map((n) => [n.name, n]))
  const all = async (tree: string | undefined, p: string, change: DiffEntry['change']): Promise<void> => {
    if (!tree) return
    for (const n of (await ctx.repo.loadTree(tree)).nodes) {
      out.push({change, scope, path: `${p}/${n.name}`})
      if (n.type === 'dir') await all(n.subtree, `${p}/${n.name}`, change)
    }
  }
  for (const na of ta) {
    const p = `${prefix}/${na.name}`
    const nb = mb.get(na.name)
    if (!nb) {
      out.push({change: 'removed', scope, path: p})
      if (na.type === 'dir') await all(na.subtree, p, 'removed')
      continue
    }
    if (na.type === 'dir' && nb.type === 'dir') {
      if (!sameNode({...na, subtree: undefined}, {...nb, subtree: undefined})) out.push({change: 'changed', scope, path: p})
      await diffTrees(ctx, scope, na.subtree, nb.subtree, p, out)
    } else if (!sameNode(na, nb)) {
      out.push({change: 'changed', scope, path: p})
    }
  }
  for (const nb of tb) {
    if (ma.has(nb.name)) continue
    const p = `${prefix}/${nb.name}`
    out.push({change: 'added', scope, path: p})
    if (nb.type === 'dir') await all(nb.subtree, p, 'added')
  }
}

export async function diffSnapshots(ctx: Context, refA: string, refB: string): Promise<{from: string; to: string; changes: DiffEntry[]}> {
  const a = resolveSnapshot(ctx, refA)
  const b = resolveSnapshot(ctx, refB)
  const out: DiffEntry[] = []
  await diffTrees(ctx, 'fs', a.manifest.container?.fsDiff, b.manifest.container?.fsDiff, '', out)
  const key = (m: SnapshotManifest['mounts'][number]): string => (m.type === 'volume' ? m.source : `${m.source}`)
  const ma = new Map(a.manifest.mounts.map((m) => [key(m), m]))
  const mb = new Map(b.manifest.mounts.map((m) => [key(m), m]))
  for (const k of new Set([...ma.keys(), ...mb.keys()])) {
    await diffTrees(ctx, k, ma.get(k)?.tree, mb.get(k)?.tree, '', out)
  }
  return {from: a.id, to: b.id, changes: out}
}
