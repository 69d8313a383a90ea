(ns jepsen.weir.db
  "Installs and runs weir on Jepsen's nodes: an etcd member and a broker on
  each, from artifacts built on the control node (the weir binary; etcd
  from the nodes' Debian packages). Kill, pause and, with lazyfs, losing
  writes that were never fsynced. With the :broker-clock fault, each broker
  runs under libfaketime, its wall clock offset by what `faketime-file`
  says (weir.clock)."
  (:require [clojure.string :as str]
            [clojure.tools.logging :refer [info warn]]
            [jepsen [control :as c]
                    [core :as jepsen]
                    [db :as db]
                    [lazyfs :as lazyfs]
                    [util :as util]]
            [jepsen.control.net :as cn]
            [jepsen.control.util :as cu]
            [jepsen.os.debian :as debian]
            [weir.clock :as clock]))

(def dir "/opt/weir")
(def bin (str dir "/bin/weir"))
(def data-dir (str dir "/data"))
(def config-file (str dir "/weir.toml"))
(def log-file (str dir "/weir.log"))
(def pid-file (str dir "/weir.pid"))
(def etcd-dir (str dir "/etcd"))
(def etcd-log (str dir "/etcd.log"))
(def etcd-pid (str dir "/etcd.pid"))
(def faketime-file (str dir "/faketime"))
(def faketime-lib "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")

(defn broker-clock?
  "Whether the test steps brokers' clocks (the :broker-clock fault)."
  [opts]
  (contains? (set (:nemesis opts)) :broker-clock))

(defn set-broker-clock!
  "Offsets this node's broker's wall clock by `secs` seconds (0: the true
  time). libfaketime re-reads the file within a second."
  [secs]
  (c/su (c/exec :echo (clock/faketime-line secs) :> faketime-file)))

(defn broker-id [test node] (inc (.indexOf ^java.util.List (:nodes test) node)))

(defn- config
  [test node]
  (str "broker_id = " (broker-id test node) "\n"
       "data_dir = \"" data-dir "\"\n"
       "listen = \"" (cn/local-ip) ":9092\"\n"
       "http_listen = \"" (cn/local-ip) ":8080\"\n"
       "metrics_listen = \"" (cn/local-ip) ":9093\"\n"
       "etcd = [" (str/join ", " (for [n (:nodes test)] (str "\"" (cn/ip n) ":2379\""))) "]\n"
       "cluster_name = \"jepsen\"\n"
       "default_replication_factor = 3\n"))

(defn- start-etcd!
  [test node]
  (let [ip      (cn/local-ip)
        cluster (str/join "," (for [n (:nodes test)] (str n "=http://" (cn/ip n) ":2380")))]
    (cu/start-daemon! {:logfile etcd-log :pidfile etcd-pid :chdir dir}
                      "/usr/bin/etcd"
                      :--name node
                      :--data-dir etcd-dir
                      :--listen-client-urls (str "http://" ip ":2379")
                      :--advertise-client-urls (str "http://" ip ":2379")
                      :--listen-peer-urls (str "http://" ip ":2380")
                      :--initial-advertise-peer-urls (str "http://" ip ":2380")
                      :--initial-cluster cluster
                      :--initial-cluster-state :new)))

(defn- start-weir!
  [opts]
  (cu/start-daemon! (cond-> {:logfile log-file :pidfile pid-file :chdir dir}
                      (broker-clock? opts)
                      (assoc :env {:LD_PRELOAD              faketime-lib
                                   :FAKETIME_TIMESTAMP_FILE faketime-file
                                   :FAKETIME_CACHE_DURATION "1"
                                   :DONT_FAKE_MONOTONIC     "1"}))
                    bin :server :--config config-file))

(defrecord DB [opts lazyfs]
  db/DB
  (setup! [this test node]
    (c/su
      (debian/install [:etcd-server])
      (c/exec :systemctl :stop :etcd (c/lit "|| true"))
      (c/exec :mkdir :-p (str dir "/bin") data-dir)
      (c/upload (:weir-binary opts) bin)
      (c/exec :chmod :+x bin)
      (when lazyfs (db/setup! lazyfs test node))
      (c/exec :echo (config test node) :> config-file)
      (when (broker-clock? opts)
        (debian/install [:faketime])
        (set-broker-clock! 0))
      (start-etcd! test node)
      (jepsen/synchronize test)
      (start-weir! opts)
      (cu/await-tcp-port 8080 {:timeout 60000})))

  (teardown! [this test node]
    (c/su
      (cu/stop-daemon! bin pid-file)
      (cu/stop-daemon! "/usr/bin/etcd" etcd-pid)
      (when lazyfs (db/teardown! lazyfs test node))
      (c/exec :rm :-rf dir)))

  db/LogFiles
  (log-files [this test node]
    [log-file etcd-log])

  db/Process
  (start! [this test node]
    (c/su (start-weir! opts)))
  (kill! [this test node]
    (c/su
      (cu/grepkill! :kill "weir server")
      (when lazyfs (lazyfs/lose-unfsynced-writes! lazyfs))))

  db/Pause
  (pause! [this test node]
    (c/su (cu/grepkill! :stop "weir server")))
  (resume! [this test node]
    (c/su (cu/grepkill! :cont "weir server"))))

(defn db
  "A weir DB. opts: :weir-binary (a path on the control node), :lazyfs
  (mount the data directory on lazyfs, so a kill also loses unfsynced
  writes)."
  [opts]
  (map->DB {:opts   opts
            :lazyfs (when (:lazyfs opts) (lazyfs/db data-dir))}))
