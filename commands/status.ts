import {Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {formatBytes} from '../src/progress.js'
import {StatusResult, status} from '../src/services/status.js'

export default class Status extends BaseCommand<typeof Status> {
  static override description =
    'Per scheduled target: last success, last failure, next run, sizes; and every volume or bind mount on the engine that no schedule covers'
  static override flags = {
    config: Flags.string({description: 'JSON schedule config file', env: 'HOLYSHIP_SCHEDULE_CONFIG'}),
    'docker-host': Flags.string({description: 'Docker engine (default: DOCKER_HOST)'}),
  }

  async run(): Promise<StatusResult> {
    const f = this.flags
    const r = await status({repo: f.repo, catalogue: f.catalogue, dockerHost: f['docker-host'], config: f.config})
    this.say(`repository ${r.repository}: ${r.snapshots} snapshots, ${formatBytes(r.repositoryBytes)}; engine ${r.engine}`)
    for (const t of r.targets) {
      this.say(`${t.target}${t.scheduled ? `  ${t.schedule}` : '  (not scheduled any more)'}${t.keep ? `  keep ${t.keep}` : ''}${t.to ? `  to ${t.to}` : ''}${t.missing ? '  NOT ON THE ENGINE' : ''}`)
      this.say(`    last success ${t.lastSuccess ?? 'never'}, last failure ${t.lastFailure ? `${t.lastFailure} (${t.lastError})` : 'never'}, next run ${t.nextRun ?? '-'}`)
      this.say(
        `    ${t.snapshots} snapshot(s)${t.lastSnapshot ? `, newest ${t.lastSnapshot.id.slice(0, 12)} at ${t.lastSnapshot.time}: ${formatBytes(t.lastSnapshot.bytes)} (${formatBytes(t.lastSnapshot.newBytes)} new)` : ''}; ${t.runs} run(s), ${t.failures} failed, ${t.overruns} overrun(s)`,
      )
    }
    if (r.targets.length === 0) this.say('nothing is scheduled')
    if (r.uncovered.length === 0) this.say('every volume and bind mount is covered by a schedule')
    else {
      this.say(`not covered by any schedule (${r.uncovered.length}):`)
      for (const u of r.uncovered) this.say(`    ${u.type} ${u.source}${u.usedBy.length ? `  used by ${u.usedBy.join(', ')}` : '  (unused)'}`)
    }
    for (const p of r.problems) this.say(`${p.key}: not scheduled: ${p.error}`)
    for (const l of r.locks) this.say(`lock: ${l}`)
    return r
  }
}
