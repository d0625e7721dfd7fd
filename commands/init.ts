import {BaseCommand} from '../src/cli/base.js'
import {initRepository, InitResult} from '../src/services/init.js'

export default class Init extends BaseCommand<typeof Init> {
  static override description = 'Create a repository (default: $HOLYSHIP_REPO or $XDG_DATA_HOME/holyship/repo)'
  static override examples = ['<%= config.bin %> init', '<%= config.bin %> init --repo /srv/holyship']

  async run(): Promise<InitResult> {
    const r = await initRepository({repo: this.flags.repo, catalogue: this.flags.catalogue})
    this.say(`created repository ${r.id.slice(0, 12)} at ${r.repository}`)
    return r
  }
}
