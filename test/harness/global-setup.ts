/**
 * Global setup of the `integration` vitest project: two private Docker engines ("two hosts", A and
 * B), each in its own network namespace, with the busybox test image in A (and the postgres test
 * image, always: the realistic tier is part of the default suite).
 *
 * Tests get them with `inject('holyshipEngineA')` / `inject('holyshipEngineB')` (pass to
 * connectEngine() for a Dockerode client) or `inject('holyshipDockerHostA')`; child processes get
 * HOLYSHIP_TEST_DOCKER_HOST_A / _B. DOCKER_HOST is pointed at engine A as a safety net, so that
 * nothing under test can reach the machine's own Docker by default.
 */
import type {TestProject} from 'vitest/node'
import {engineInfo, log, startEngine, stopAllEngines, sweepStale, type EngineInfo} from './engine.js'
import {BUSYBOX_IMAGE, POSTGRES_IMAGE, ensurePostgresImage, importBusybox} from './images.js'

declare module 'vitest' {
  export interface ProvidedContext {
    holyshipEngineA: EngineInfo
    holyshipEngineB: EngineInfo
    /** 'unix:///tmp/hs-…/a/docker.sock' */
    holyshipDockerHostA: string
    holyshipDockerHostB: string
    /** tag of the busybox image imported into engine A */
    holyshipBusyboxImage: string
    /** tag of the postgres image imported into engine A (empty with HOLYSHIP_TEST_POSTGRES=0) */
    holyshipPostgresImage: string
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const t0 = Date.now()
  sweepStale()
  try {
    const [a, b] = await Promise.all([startEngine('a'), startEngine('b')])
    await importBusybox(a, BUSYBOX_IMAGE)
    // the realistic tier always runs: build (once per machine) and import the postgres image up front,
    // so no single test pays the first build inside its own timeout; HOLYSHIP_TEST_POSTGRES=0 opts out
    const withPostgres = process.env.HOLYSHIP_TEST_POSTGRES !== '0'
    if (withPostgres) await ensurePostgresImage(a, POSTGRES_IMAGE)

    project.provide('holyshipEngineA', engineInfo(a))
    project.provide('holyshipEngineB', engineInfo(b))
    project.provide('holyshipDockerHostA', a.dockerHost)
    project.provide('holyshipDockerHostB', b.dockerHost)
    project.provide('holyshipBusyboxImage', BUSYBOX_IMAGE)
    project.provide('holyshipPostgresImage', withPostgres ? POSTGRES_IMAGE : '')
    process.env.HOLYSHIP_TEST_DOCKER_HOST_A = a.dockerHost
    process.env.HOLYSHIP_TEST_DOCKER_HOST_B = b.dockerHost
    process.env.DOCKER_HOST = a.dockerHost
    log(`integration setup ready in ${Date.now() - t0} ms: A=${a.dockerHost} B=${b.dockerHost}`)
  } catch (e) {
    await stopAllEngines()
    throw e
  }
  return async () => {
    const t1 = Date.now()
    await stopAllEngines()
    log(`engines stopped in ${Date.now() - t1} ms`)
  }
}
