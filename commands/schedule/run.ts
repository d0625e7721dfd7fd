import {Flags} from '@oclif/core'
import {BaseCommand} from '../../src/cli/base.js'
import {SchedulerResult, runScheduler} from '../../src/services/schedule.js'

export default class ScheduleRun extends BaseCommand<typeof ScheduleRun> {
  static override description =
    'Run the scheduler in the foreground: snapshot every container labelled holyship.schedule (and the targets of --config) when due, one log line per run. SIGTERM/SIGINT finish the current run and exit 0.'
  static override examples = [
    '<%= config.bin %> schedule run',
    '<%= config.bin %> schedule run --config /etc/holyship/schedule.json --metrics-port 9473',
  ]
  static override flags = {
    config: Flags.string({description: 'JSON config file (containers, volumes, webhook, prune)', env: 'HOLYSHIP_SCHEDULE_CONFIG'}),
    'metrics-port': Flags.integer({description: 'serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port)', min: 0, max: 65535}),
    reader: Flags.string({description: 'how to read data (see snapshot)', options: ['auto', 'api', 'direct'], default: 'auto', env: 'HOLYSHIP_READER'}),
    'docker-host': Flags.string({description: 'Docker engine (default: DOCKER_HOST)'}),
  }

  async run(): Promise<SchedulerResult> {
    const f = this.flags
    const json = this.jsonEnabled()
    const r = await runScheduler({
      repo: f.repo,
      catalogue: f.catalogue,
      dockerHost: f['docker-host'],
      config: f.config,
      metricsPort: f['metrics-port'],
      reader: f.reader as 'auto' | 'api' | 'direct',
      // with --json: one JSON object per run on stdout, the log on stderr
      log: (line) => (json ? process.stderr.write(line + '\n') : this.log(line)),
      ...(json ? {onRun: (rec) => process.stdout.write(JSON.stringify(rec) + '\n')} : {}),
    })
    return r
  }
}
