import {BaseCommand} from '../../src/cli/base.js'
import {rebuildCatalogue} from '../../src/services/rebuild.js'

export default class CatalogueRebuild extends BaseCommand<typeof CatalogueRebuild> {
  static override description = 'Rebuild the SQLite catalogue from the repository alone'

  async run(): Promise<Awaited<ReturnType<typeof rebuildCatalogue>>> {
    const r = await rebuildCatalogue({repo: this.flags.repo, catalogue: this.flags.catalogue})
    if (r.movedAside) this.warn(`the old catalogue could not be opened and was moved to ${r.movedAside}`)
    this.say(`catalogue ${r.catalogue} rebuilt: ${r.snapshots} snapshots, ${r.indexFiles} index files, ${r.trees} trees`)
    return r
  }
}
