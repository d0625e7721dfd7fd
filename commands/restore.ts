import {Args, Flags} from '@oclif/core'
import {SkippedEntry} from '../src/archive/restorer.js'
import {BaseCommand} from '../src/cli/base.js'
import {keepReplacedFlag} from '../src/cli/restore-flags.js'
import {HolyshipError} from '../src/errors.js'
import {formatBytes} from '../src/progress.js'
import {resolveSnapshot} from '../src/services/inspect.js'
import {describeRestore, restore, restorePath, RestorePathResult, RestoreResult, restoreWarnings} from '../src/services/restore.js'
import {withEngineContext} from '../src/services/run.js'

export default class Restore extends BaseCommand<typeof Restore> {
  static override description = 'Re-create a container (or volumes) from a snapshot, or copy paths out with --path/--target'
  static override args = {snapshot: Args.string({description: 'id, unique id prefix, latest, or latest:NAME', required: true})}
  static override flags = {
    name: Flags.string({description: 'name of the restored container (or volume, for a one-volume snapshot)'}),
    'volume-prefix': Flags.string({description: 'restore volumes under PREFIX+name so the originals can stay'}),
    start: Flags.boolean({description: 'start the restored container'}),
    force: Flags.boolean({description: 'replace an existing container, volume or target files, and write into a bind mount directory that is not empty'}),
    'keep-replaced': keepReplacedFlag,
    path: Flags.string({description: 'restore only this path (as the container sees it) to --target', dependsOn: ['target']}),
    target: Flags.string({description: 'host directory for --path', dependsOn: ['path']}),
    partial: Flags.boolean({
      description: 'restore what is intact of a damaged snapshot: files whose data is damaged are left out and listed, then exit 15 (REPO_DAMAGED)',
    }),
    writer: Flags.string({
      description: "how to fill volumes: direct into the new volume's directory on the engine host's disk, or through the Docker API",
      options: ['auto', 'api', 'direct'],
      default: 'auto',
      env: 'HOLYSHIP_WRITER',
    }),
    'docker-host': Flags.string({description: 'Docker engine (default: DOCKER_HOST)'}),
  }

  async run(): Promise<RestoreResult | RestorePathResult> {
    const f = this.flags
    // it writes when what --force replaces is snapshotted into the repository
    const writes = f.force && f['keep-replaced'] && !f.path
    const unlocked = (why: string): void => void this.warn(`the repository's lock cannot be written (${why}): restoring without it, so a prune meanwhile could fail this restore`)
    const r = await withEngineContext(f, {purpose: 'restore', writes, unlocked}, async (ctx, engine, lock): Promise<RestoreResult | RestorePathResult> => {
      const {id, manifest} = resolveSnapshot(ctx, this.args.snapshot)
      if (f.path) {
        const r = await restorePath({repo: ctx.repo, snapshotId: id, manifest, path: f.path, target: f.target!, force: f.force, partial: f.partial, progress: this.progress()})
        this.say(`restored ${f.path} (${r.files} files, ${formatBytes(r.bytes)}) from the ${r.source} into ${r.target}`)
        this.warnAll(r)
        return r
      }
      const r = await restore({
        repo: ctx.repo,
        engine,
        snapshotId: id,
        manifest,
        name: f.name,
        volumePrefix: f['volume-prefix'],
        start: f.start,
        force: f.force,
        partial: f.partial,
        writer: f.writer as 'auto' | 'api' | 'direct',
        catalogue: ctx.catalogue,
        keepReplaced: f['keep-replaced'],
        lock,
        progress: this.progress(),
      })
      for (const line of describeRestore(r)) this.say(line)
      this.warnAll(r)
      return r
    })
    this.failOnSkipped(r, f.start && 'container' in r && r.container !== undefined)
    return r
  }

  private warnAll(r: RestoreResult | RestorePathResult): void {
    for (const w of restoreWarnings(r)) this.warn(w)
  }

  /** --partial: list what was left out (stderr), print the result with --json, then exit REPO_DAMAGED */
  private failOnSkipped(r: {skipped?: SkippedEntry[]}, wantedStart: boolean | undefined): void {
    const skipped = r.skipped
    if (!skipped || skipped.length === 0) return
    for (const s of skipped) process.stderr.write(`not restored: ${s.path}: ${s.reason}\n`)
    if (this.jsonEnabled()) this.logJson(r)
    throw new HolyshipError(
      'REPO_DAMAGED',
      `${skipped.length} path(s) could not be restored because their data is damaged; everything else was restored${wantedStart ? ' (the container was not started)' : ''}`,
      {hint: 'run `holyship verify --read-data` for the damaged objects'},
    )
  }
}
