import {defineConfig} from 'vitest/config'

export default defineConfig({
  test: {
    // engines are torn down in the integration project's global teardown
    teardownTimeout: 120_000,
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          environment: 'node',
          // beside the integration project's engines on 2 cores, the heaviest unit tests (the
          // chunker's byte-at-a-time reference, 3.5-5 s) came within reach of the 5 s default
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          environment: 'node',
          // private dockerd + containerd pairs, see test/harness/engine.ts
          globalSetup: ['test/harness/global-setup.ts'],
          pool: 'forks',
          // the engines are shared: one test file at a time
          fileParallelism: false,
          maxWorkers: 1,
          testTimeout: 120_000,
          hookTimeout: 300_000,
        },
      },
    ],
  },
})
