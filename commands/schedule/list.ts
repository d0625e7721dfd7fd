import {Flags} from '@oclif/core'
import {BaseCommand} from '../../src/cli/base.js'
import {ScheduleListResult, listSchedule} from '../../src/services/schedule.js'

export default class ScheduleList extends BaseCommand<typeof ScheduleList> {
  static override description = 'What the scheduler would run when: labelled containers and the config file, with their next runs'
  static override flags = {
    config: Flags.string({description: 'JSON config file', env: 'HOLYSHIP_SCHEDULE_CONFIG'}),
    next: Flags.integer({description: 'upcoming runs to show per target', default: 3, min: 1, max: 100}),
    'docker-host': Flags.string({description: 'Docker engine (default: DOCKER_HOST)'}),
  }

  async run(): Promise<ScheduleListResult> {
    const f = this.flags
    const r = await listSchedule({dockerHost: f['docker-host'], config: f.config, count: f.next})
    if (r.targets.length === 0) this.say('nothing is scheduled (label containers with holyship.schedule, or use --config)')
    for (const t of r.targets) {
      const extra = [t.keep && `keep ${t.keep}`, t.to && `to ${t.to}`, t.stop && 'stop', t.pre && 'pre-hook', t.post && 'post-hook', t.missing && 'NOT ON THE ENGINE']
        .filter(Boolean)
        .join(', ')
      this.say(`${t.target}  ${t.schedule}  (${t.source}${extra ? `; ${extra}` : ''})`)
      for (const n of t.next) this.say(`    ${n}`)
    }
    for (const p of r.problems) process.stderr.write(`holyship: ${p.key}: not scheduled: ${p.error}\n`)
    return r
  }
}
